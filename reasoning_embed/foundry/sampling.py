"""Batched decoding (sampled or greedy, KV-cached) and completion log-probabilities for small causal LMs.

Prompts are left-padded with explicit ``position_ids`` so every row's first real token is at position 0;
completions stop at EOS (the EOS token itself is part of the completion and of its mask). Sampling draws
from an explicit ``torch.Generator``, so a run is reproducible independently of other RNG use.
"""

from __future__ import annotations

import torch


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def decode(model, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int, greedy: bool = True,
           temperature: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (completion ids [B, T], completion mask [B, T]); mask is 1 up to and including EOS."""
    ids, mask = left_pad(prompts, pad_id)
    B = ids.shape[0]
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :]
    pos = _positions(mask)[:, -1]
    done = torch.zeros(B, dtype=torch.bool)
    toks, tmask = [], []
    for t in range(max_new_tokens):
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        toks.append(nxt)
        tmask.append((~done).long())
        done = done | (nxt == eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None], past_key_values=past,
                    use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
    return torch.stack(toks, 1), torch.stack(tmask, 1)


def completion_logprobs(model, prompts: list[list[int]], completions: torch.Tensor, comp_mask: torch.Tensor,
                        pad_id: int) -> torch.Tensor:
    """Per-token log p(completion token | prompt, earlier completion tokens), [B, T] (0 where masked)."""
    p_ids, p_mask = left_pad(prompts, pad_id)
    ids = torch.cat([p_ids, completions], dim=1)
    mask = torch.cat([p_mask, comp_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    P = p_ids.shape[1]
    logits = logits[:, P - 1 : -1, :].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, completions[..., None]).squeeze(-1)
    return logp * comp_mask
