"""Held-out evaluation: greedy exact-match accuracy (Wilson 95 % interval) and LM loss on held-out text."""

from __future__ import annotations

import torch

from reasoning_embed.foundry.problems import AnswerFormat, Problem
from reasoning_embed.foundry.sampling import decode
from reasoning_embed.utils.stats import wilson_interval


@torch.no_grad()
def heldout_accuracy(model, tok, problems: list[Problem], max_new_tokens: int = 24, batch_size: int = 64) -> dict:
    """Greedy-decode each prompt; exact match of the first ``Answer:`` line. Per-kind breakdown included.

    ``lenient_accuracy`` also counts the right answer in the prose format (``the answer is 7``) on the first
    line: what the model knows, whatever format it answers in (a superset of the strict hits)."""
    model.eval()
    fmt = AnswerFormat.for_tokenizer(tok)
    correct, lenient, per_kind, examples = 0, 0, {}, []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in chunk]
        comp, mask = decode(model, prompts, tok.eos_token_id, tok.pad_token_id, max_new_tokens, greedy=True)
        for p, c, m in zip(chunk, comp, mask):
            text = tok.decode(c[m.bool()].tolist(), skip_special_tokens=True)
            r = fmt.reward(text, p.answer)
            correct += int(r)
            lenient += int(r == 1.0 or fmt.lenient(text) == fmt.expected(p.answer))
            k = per_kind.setdefault(p.kind, [0, 0])
            k[0] += int(r)
            k[1] += 1
            if len(examples) < 8 and i == 0 and len(examples) < len(chunk):
                examples.append({"prompt": p.prompt, "completion": text, "answer": p.answer})
    n = len(problems)
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / max(n, 1), "ci95": [lo, hi], "correct": correct, "n": n,
            "lenient_accuracy": lenient / max(n, 1), "lenient_ci95": list(wilson_interval(lenient, n)),
            "per_kind": {k: v[0] / v[1] for k, v in per_kind.items()}, "examples": examples}


@torch.no_grad()
def lm_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats/token) over fixed blocks of held-out text."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    return total / max(count, 1)
