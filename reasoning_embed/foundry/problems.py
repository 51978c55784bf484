"""Generated arithmetic / logic problems with exact, verifiable answers, and the reward that checks them.

Four kinds, each with one fixed prompt format (the completion a model must produce starts after ``?``):

- ``add``:    ``Question: 3 + 4 = ?``                   -> `` Answer: 7``      (a, b in 0..9)
- ``sub``:    ``Question: 12 - 4 = ?``                  -> `` Answer: 8``      (0 <= a-b, a in 0..18, b in 0..9)
- ``max``:    ``Question: Which is larger, 47 or 52?``  -> `` Answer: 52``     (two different numbers 10..99)
- ``parity``: ``Question: Is 37 even or odd?``          -> `` Answer: odd``    (n in 0..99)

Every problem is in exactly one split, ``train`` or ``heldout`` (a hash of its key, ~25 % held out), so
held-out accuracy measures problems never trained on in any stage. ``worked_solution`` is the text SFT
trains on; ``fact_text`` is the prose the base model sees during pre-training (the knowledge, without
the question/answer format). The reward is exact: the first ``Answer:`` in the completion, up to the
end of its line, stripped, must equal the answer string, read in the text the model's tokenizer decodes
(``AnswerFormat``: ``bpe_code`` writes `` Answer: 7`` back as ``answer:7``).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

KINDS = ("add", "sub", "max", "parity")


def answer_line(answer: str) -> str:
    """`` Answer: 7``: the one format the reward checks (every completion and training text that should
    earn the reward ends with it)."""
    return f" Answer: {answer}"


@dataclass(frozen=True)
class Problem:
    kind: str
    a: int
    b: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.a}:{self.b}"

    @property
    def prompt(self) -> str:
        if self.kind == "add":
            return f"Question: {self.a} + {self.b} = ?"
        if self.kind == "sub":
            return f"Question: {self.a} - {self.b} = ?"
        if self.kind == "max":
            return f"Question: Which is larger, {self.a} or {self.b}?"
        return f"Question: Is {self.a} even or odd?"

    @property
    def answer(self) -> str:
        if self.kind == "add":
            return str(self.a + self.b)
        if self.kind == "sub":
            return str(self.a - self.b)
        if self.kind == "max":
            return str(max(self.a, self.b))
        return "even" if self.a % 2 == 0 else "odd"

    @property
    def direct_completion(self) -> str:
        return answer_line(self.answer)

    @property
    def worked_solution(self) -> str:
        """The completion SFT learns: restate the fact in the words of the pre-training prose, then the
        ``Answer:`` line (recall, then answer: the one reasoning step a model this small can learn; longer
        procedures such as "count up from 3 by 4" need the prompt's digits copied, which it could not)."""
        a, b, ans = self.a, self.b, self.answer
        if self.kind == "add":
            steps = f"{a} plus {b} is {ans}."
        elif self.kind == "sub":
            steps = f"{a} minus {b} is {ans}."
        elif self.kind == "max":
            steps = f"Of {a} and {b}, the larger is {ans}."
        else:
            steps = f"The number {a} is {ans}."
        return f" {steps}" + answer_line(ans)

    def fact_text(self, rng: random.Random) -> str:
        """The same fact as prose (pre-training text): knowledge without the Q/A format."""
        a, b, ans = self.a, self.b, self.answer
        if self.kind == "add":
            return rng.choice([f"{a} plus {b} is {ans}.", f"{a} + {b} = {ans}", f"Adding {b} to {a} gives {ans}."])
        if self.kind == "sub":
            return rng.choice([f"{a} minus {b} is {ans}.", f"{a} - {b} = {ans}", f"Taking {b} from {a} leaves {ans}."])
        if self.kind == "max":
            lo = min(a, b)
            return rng.choice([f"{ans} is larger than {lo}.", f"Of {a} and {b}, the larger is {ans}.",
                               f"{lo} is smaller than {ans}."])
        return rng.choice([f"{a} is {ans}.", f"The number {a} is {ans}."])


def all_problems(kind: str) -> list[Problem]:
    if kind == "add":
        return [Problem("add", a, b) for a in range(10) for b in range(10)]
    if kind == "sub":
        return [Problem("sub", a, b) for a in range(19) for b in range(10) if a >= b]
    if kind == "max":
        return [Problem("max", a, b) for a in range(10, 100) for b in range(10, 100) if a != b]
    if kind == "parity":
        return [Problem("parity", n) for n in range(100)]
    raise ValueError(f"unknown problem kind {kind!r}; known: {KINDS}")


def split_of(p: Problem, heldout_fraction: float = 0.25) -> str:
    h = int(hashlib.sha1(p.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def problems(split: str, kinds=KINDS, heldout_fraction: float = 0.25) -> list[Problem]:
    return [p for k in kinds for p in all_problems(k) if split_of(p, heldout_fraction) == split]


def heldout_eval_set(kinds=KINDS, per_kind: int = 48, seed: int = 0, heldout_fraction: float = 0.25) -> list[Problem]:
    """A fixed, kind-balanced sample of held-out problems (all of a kind when it has fewer)."""
    rng = random.Random(f"eval-{seed}")
    out = []
    for k in kinds:
        ps = [p for p in all_problems(k) if split_of(p, heldout_fraction) == "heldout"]
        out += ps if len(ps) <= per_kind else rng.sample(ps, per_kind)
    return out


def train_sampler(kinds=KINDS, seed: int = 0, heldout_fraction: float = 0.25):
    """Endless kind-balanced stream of training-split problems (deterministic per seed)."""
    rng = random.Random(f"train-{seed}")
    pools = {k: [p for p in all_problems(k) if split_of(p, heldout_fraction) == "train"] for k in kinds}
    while True:
        yield rng.choice(pools[rng.choice(list(kinds))])


class AnswerFormat:
    """The reward's reading of a completion, in the text a tokenizer decodes back.

    ``normalize`` is what a round trip through the tokenizer does to text (``for_tokenizer``): the identity for
    the Qwen-pipeline BPE, lowercasing and dropping whitespace for ``bpe_code``, which decodes `` Answer: 7``
    as ``answer:7``. The markers (``Answer:``, ``the answer is``) are normalized the same way, so a model
    trained on either tokenizer is held to the same rule: the first ``Answer:`` up to the end of its line
    (for ``bpe_code``, which has no line breaks, the end of the completion) must be exactly the answer."""

    def __init__(self, normalize=None):
        self.normalize = normalize or (lambda text: text)
        answer = re.escape(self.normalize("Answer:").strip())
        prose = "|".join(sorted({re.escape(self.normalize(f" {t} answer is").strip()) for t in ("The", "the")}))
        self.answer_re = re.compile(answer + r"[ \t]*([^\n]*)")
        self.lenient_re = re.compile(f"(?:{answer}|{prose})" + r"[ \t]*([A-Za-z0-9-]+)")

    @classmethod
    def for_tokenizer(cls, tok) -> AnswerFormat:
        return cls(lambda text: tok.decode(tok(text, add_special_tokens=False)["input_ids"]))

    def extract(self, completion: str) -> str | None:
        """The text after the first ``Answer:`` up to the end of that line, stripped; None when absent."""
        m = self.answer_re.search(completion)
        return m.group(1).strip() if m else None

    def lenient(self, completion: str) -> str | None:
        """The first word after ``Answer:`` or ``the answer is`` in the completion's first line; None when absent.

        Not the reward: it measures whether the model *knows* the answer whatever format it writes it in."""
        m = self.lenient_re.search(completion.split("\n", 1)[0])
        return m.group(1) if m else None

    def expected(self, answer: str) -> str:
        """``answer`` as the tokenizer writes it back (``odd``, ``7``: unchanged by both tokenizers)."""
        return self.normalize(answer).strip()

    def reward(self, completion: str, answer: str) -> float:
        """1.0 iff the first ``Answer:`` line of ``completion`` is exactly ``answer`` (after stripping), else 0.0."""
        got = self.extract(completion)
        return 1.0 if got is not None and got == self.expected(answer) else 0.0


PLAIN = AnswerFormat()  # text as written (the Qwen-pipeline BPE decodes it back unchanged)
extract_answer, lenient_answer, reward = PLAIN.extract, PLAIN.lenient, PLAIN.reward
