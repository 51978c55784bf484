"""Pooling token states into one vector per text.

``prompt_length`` follows sentence-transformers' convention (so an exported model embeds identically
there): the first ``prompt_length`` attended tokens of a row are the instruction; they are attended to
but excluded from the mean. Padding may be on either side: positions are found from the mask.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "last_token", "first")


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.long().argmax(dim=1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    seq_len = attention_mask.shape[1]
    return seq_len - 1 - attention_mask.long().flip(1).argmax(dim=1)


def mean_pool_mask(attention_mask: torch.Tensor, prompt_length: torch.Tensor | None) -> torch.Tensor:
    """The tokens the mean runs over: attended, and not part of the instruction prompt."""
    mask = attention_mask.bool()
    if prompt_length is None:
        return mask
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    start = first_token_index(attention_mask).unsqueeze(1)
    pooled = mask & (positions >= start + prompt_length.to(mask.device).view(-1, 1))
    # A query truncated inside its instruction has no text tokens left: fall back to all its tokens.
    empty = ~pooled.any(dim=1, keepdim=True)
    return torch.where(empty, mask, pooled)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean",
         prompt_length: torch.Tensor | None = None) -> torch.Tensor:
    if mode == "mean":
        m = mean_pool_mask(attention_mask, prompt_length).unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "last_token":
        return hidden[rows, last_token_index(attention_mask)]
    if mode == "first":
        return hidden[rows, first_token_index(attention_mask)]
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
