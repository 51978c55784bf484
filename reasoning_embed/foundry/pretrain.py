"""Causal-LM pre-training of the base model on offline text.

The mixture (by documents, shuffled deterministically, packed into fixed blocks with EOS separators):

- general text: the stdlib corpus's train split (docstring summaries, docstrings and code);
- arithmetic/logic *facts* as prose, over every problem (train and held-out): "3 plus 4 is 7.",
  "Of 47 and 52, the larger is 52.", "37 is odd." — the knowledge, without the question format;
- two-digit arithmetic in the question/answer format (``Question: 23 + 45 = ? Answer: 68``), whose
  operands lie outside every problem the foundry evaluates;
- a smaller share of *training-split* problems in their question/answer format (never a held-out one),
  so the base answers some questions right and RL has a reward signal to work with.

In both Q/A shares a fraction ``qa_prose_fraction`` of the answers is written `` The answer is 7.`` rather
than `` Answer: 7`` (the format the reward checks), as answers in real text come in many formats. At the
default 0.6 the base's greedy habit is the prose format, so its strict held-out accuracy is ~0 while its
*lenient* accuracy (the right answer in either format) shows what it knows; sampled at temperature 1 it
uses the checked format ~40 % of the time, which is the signal RLVR can reinforce. This is the
"base models know it but do not say it in the checked format" situation in which RLVR's early gains on
real base models are largely format (e.g. DeepSeek-R1-Zero's format reward).

So ``base`` has seen every held-out fact only as prose, never as a question; RLVR and SFT then practise
the question format on training-split problems, and held-out accuracy measures transfer.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from reasoning_embed.foundry.problems import KINDS, all_problems, answer_line
from reasoning_embed.utils.schedule import cosine_with_warmup


def stdlib_docs(corpus_dir: Path, split: str, max_chars: int, seed: int = 0) -> list[str]:
    from reasoning_embed.data.stdlib_corpus import corpus_texts

    docs = list(corpus_texts(corpus_dir, split))
    random.Random(f"stdlib-{split}-{seed}").shuffle(docs)
    out, n = [], 0
    for d in docs:
        d = d[:2000]
        out.append(d)
        n += len(d)
        if n >= max_chars:
            break
    return out


def fact_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"facts-{seed}")
    pools = {k: all_problems(k) for k in KINDS}
    return [rng.choice(pools[rng.choice(KINDS)]).fact_text(rng) for _ in range(n)]


def answer_text(answer: str, rng: random.Random, prose_fraction: float) -> str:
    """`` Answer: 7`` (the format the reward checks) or, with probability ``prose_fraction``, `` The answer is 7.``"""
    return f" The answer is {answer}." if rng.random() < prose_fraction else answer_line(answer)


def qa_format_docs(n: int, seed: int = 0, prose_fraction: float = 0.0) -> list[str]:
    rng = random.Random(f"qa-{seed}")
    fmt = random.Random(f"qa-format-{seed}")
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-*")
        out.append(f"Question: {a} {op} {b} = ?" + answer_text(str(eval(f"{a}{op}{b}")), fmt, prose_fraction))
    return out


def task_qa_docs(n: int, kinds, heldout_fraction: float, seed: int = 0, prose_fraction: float = 0.0) -> list[str]:
    """Training-split problems in the exact prompt + direct-answer format (never held-out ones); a
    ``prose_fraction`` of them state the (right) answer as `` The answer is 7.`` instead."""
    from reasoning_embed.foundry.problems import train_sampler

    it = train_sampler(kinds, seed=10_000 + seed, heldout_fraction=heldout_fraction)
    fmt = random.Random(f"task-qa-format-{seed}")
    return [(lambda p: p.prompt + answer_text(p.answer, fmt, prose_fraction))(next(it)) for _ in range(n)]


def pack(tok, docs: list[str], block: int) -> torch.Tensor:
    """Tokenise, join with EOS, cut into [N, block] (the tail that does not fill a block is dropped)."""
    ids: list[int] = []
    enc = tok(docs, add_special_tokens=False)["input_ids"]
    for e in enc:
        ids.extend(e)
        ids.append(tok.eos_token_id)
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def pretrain_blocks(tok, corpus_dir: Path, cfg: dict, seed: int, kinds=KINDS,
                    heldout_fraction: float = 0.25) -> torch.Tensor:
    """The pre-training stream: stdlib text + facts + Q/A-format text, documents shuffled then packed."""
    prose = cfg.get("qa_prose_fraction", 0.0)
    docs = (stdlib_docs(corpus_dir, "train", cfg["stdlib_chars"], seed) + fact_docs(cfg["fact_docs"], seed)
            + qa_format_docs(cfg["qa_docs"], seed, prose)
            + task_qa_docs(cfg.get("task_qa_docs", 0), kinds, heldout_fraction, seed, prose))
    random.Random(f"mix-{seed}").shuffle(docs)
    return pack(tok, docs, cfg["block_size"])


def heldout_text_blocks(tok, corpus_dir: Path, n_blocks: int, block: int) -> torch.Tensor:
    """General held-out text for LM loss: the stdlib corpus's val split (other modules than train)."""
    blocks = pack(tok, stdlib_docs(corpus_dir, "val", n_blocks * block * 6, seed=0), block)
    return blocks[:n_blocks]


def pretrain(model, blocks: torch.Tensor, cfg: dict, seed: int, progress=None, after_step=None) -> dict:
    """Plain next-token training; returns steps, tokens and the final (smoothed) training loss.
    ``after_step()`` runs after every optimizer step (``foundry.lexical.HeldChannel``)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"])
    steps, bs = cfg["steps"], cfg["batch_size"]
    schedule = cosine_with_warmup(opt, steps, cfg["warmup"], min_lr_ratio=0.1)
    model.train()
    order = torch.randperm(blocks.shape[0], generator=g)
    cursor, ema, tokens = 0, None, 0
    for step in range(steps):
        if cursor + bs > len(order):
            order, cursor = torch.randperm(blocks.shape[0], generator=g), 0
        x = blocks[order[cursor : cursor + bs]]
        cursor += bs
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if after_step is not None:
            after_step()
        tokens += x.numel()
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if progress is not None:
            progress.update(1)
            progress.set_postfix(stage="pretrain", loss=f"{ema:.3f}", refresh=False)
    model.eval()
    return {"steps": steps, "tokens": tokens, "train_loss": ema, "blocks_available": int(blocks.shape[0])}
