"""Supervised fine-tuning of the base on worked solutions of the RLVR problems (matched budget).

Same training-split problem stream (same seed, so the same problems in the same order as RLVR's prompts)
and the same number of optimizer steps as RLVR (the learning rate is SFT's own, ``sft.lr``); the batch size
is chosen so the number of supervised completion tokens is comparable to RLVR's sampled completion tokens
(both are recorded in ``foundry.json``). Loss: next-token cross-entropy on the completion (worked solution + EOS)
only, not on the prompt.
"""

from __future__ import annotations

import torch

from reasoning_embed.foundry.sampling import completion_logprobs, left_pad


def sft_train(model, tok, sampler, cfg: dict, steps: int, seed: int, progress=None, after_step=None) -> dict:
    """``steps`` optimizer steps on worked solutions; ``after_step()`` runs after each (``foundry.lexical``)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    tokens_trained, tokens_seen, ema = 0, 0, None
    model.train()
    for _ in range(steps):
        batch = [next(sampler) for _ in range(cfg["batch_size"])]
        prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in batch]
        targets = [tok(p.worked_solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in batch]
        # right-pad the targets: left_pad on reversed lists, then flip back
        comp, mask = left_pad([t[::-1] for t in targets], tok.pad_token_id)
        comp, mask = comp.flip(1), mask.flip(1)
        logp = completion_logprobs(model, prompts, comp, mask, tok.pad_token_id)
        loss = -(logp.sum() / mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        tokens_trained += int(mask.sum())
        tokens_seen += int(mask.sum()) + sum(len(p) for p in prompts)
        lv = loss.item()
        ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        if progress is not None:
            progress.update(1)
            progress.set_postfix(stage="sft", loss=f"{ema:.3f}", refresh=False)
    model.eval()
    return {"steps": steps, "optimizer_steps": steps, "completion_tokens": tokens_trained,
            "tokens_processed": tokens_seen, "examples": steps * cfg["batch_size"], "train_loss": ema}
