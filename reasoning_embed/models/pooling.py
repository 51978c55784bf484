"""Pooling token states into one vector per text.

The first ``prompt_length`` attended tokens of a row are the instruction (``TextTokenizer.prompt_lengths``
says where the text starts); they are attended to but excluded from the mean. Padding may be on either side:
positions are found from the mask. A row with no token after its instruction pools to the zero vector (and
stays zero after L2 normalisation), exactly as sentence-transformers' mean pooling does, so an export embeds
such a query the same way.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "last_token", "first")
# The one map between these names and sentence-transformers' Pooling: its ``pooling_mode`` strings and the
# ``pooling_mode_*`` flags of its saved config.json (export writes the first, reading accepts both).
ST_POOLING_MODE = {"mean": "mean", "last_token": "lasttoken", "first": "cls"}
ST_POOLING_FLAG = {"mean": "pooling_mode_mean_tokens", "last_token": "pooling_mode_lasttoken",
                   "first": "pooling_mode_cls_token"}


def pooling_from_st(config: dict) -> str | None:
    """Our pooling name for a sentence-transformers Pooling ``config.json`` (None: not one we implement)."""
    mode = config.get("pooling_mode")
    for ours, theirs in ST_POOLING_MODE.items():
        if mode == theirs:
            return ours
    return next((ours for ours, flag in ST_POOLING_FLAG.items() if config.get(flag)), None)


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
    return mask & (positions >= start + prompt_length.to(mask.device).view(-1, 1))


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
