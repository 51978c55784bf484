"""Finding and loading a decoder LLM backbone: a local directory or a hub id (offline-aware)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from reasoning_embed.errors import BackboneNotAvailableError


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_backbone(path: str, revision: str | None = None) -> str:
    """Return a loadable path or hub id.

    A hub id that is not in the local cache while the hub is unreachable fails here, within seconds,
    with the commands that fix it — not after transformers' retry loop. (A tiny backbone is built by
    ``reasoning_embed.assets``, never here: this layer loads, it does not build.)
    """
    path = str(path)
    if Path(path).is_dir():
        return path
    if path.startswith((".", "/", "~")) or path.count("/") > 1:  # hub ids look like "org/name"
        raise BackboneNotAvailableError(f"backbone path {path!r} does not exist (expected a model directory)")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=revision)
    if isinstance(cached, str):
        return path
    if _hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE=1 is set" if _hub_offline() else "huggingface.co is unreachable"
        raise BackboneNotAvailableError(
            f"backbone {path!r} is not in the local Hugging Face cache ({_cache_dir()}) and {why}. "
            f"On a machine with network run `hf download {path}` (or `huggingface-cli download {path}`) "
            f"and copy the cache here (or set HF_HOME), or set backbone.path to a local model directory.")
    return path


def _cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def load_backbone(path: str, attention: str = "bidirectional", attn_implementation: str = "sdpa",
                  dtype: str = "float32", revision: str | None = None, check: bool = True):
    """Load ``AutoModel`` (no LM head) + tokenizer with the attention mode set and verified."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from reasoning_embed.models.attention import check_attention, set_attention_mode

    if attn_implementation == "auto":
        attn_implementation = _best_attn_implementation()
    config = AutoConfig.from_pretrained(path, revision=revision)
    set_attention_mode(config, attention)
    model = AutoModel.from_pretrained(path, config=config, revision=revision, dtype=getattr(torch, dtype),
                                      attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    report = check_attention(model, attention, vocab_high=min(len(tokenizer), 1000)) if check else None
    return model, tokenizer, report


def _best_attn_implementation() -> str:
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
