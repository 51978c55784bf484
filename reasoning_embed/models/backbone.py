"""Finding and loading a decoder LLM backbone: a local directory, a tiny offline build, or a hub id."""

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


def resolve_backbone(path: str, tiny: dict | None = None, corpus_dir: str | None = None,
                     revision: str | None = None) -> str:
    """Return a loadable path or hub id; build a tiny backbone if configured and missing.

    A hub id that is not in the local cache while the hub is unreachable fails here, within seconds,
    with the commands that fix it — not after transformers' retry loop.
    """
    if tiny is not None:
        return _resolve_tiny(str(path), dict(tiny), corpus_dir)
    if Path(path).is_dir():
        return str(path)
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


FOUNDRY_VARIANTS = ("base", "rlvr", "sft")


def _is_stale_random_init(path: Path, variant: str) -> bool:
    """A cached ``tiny_<variant>`` written by the old random-init builder (to be replaced by the foundry).
    Any other existing directory (a foundry build, a user's model, a trained export) is used as it is."""
    import json

    if path.name != f"tiny_{variant}":
        return False
    try:
        meta = json.loads((path / "foundry.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("builder") != "reasoning_embed.foundry" and str(meta.get("how", "")).startswith("random init")


def _resolve_tiny(path: str, tiny: dict, corpus_dir: str | None) -> str:
    """A tiny backbone: cached if present; else built — by the foundry (all three variants at once,
    trained) or, with ``tiny.foundry: false``, as a random initialisation (the fast path for tests)."""
    variant = tiny.get("variant", "base")
    use_foundry = bool(tiny.get("foundry", True)) and variant in FOUNDRY_VARIANTS
    target = Path(path)
    if target.is_dir() and (not use_foundry or not _is_stale_random_init(target, variant)):
        return str(target)
    if corpus_dir is not None:
        from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus

        build_stdlib_corpus(corpus_dir)
    if not use_foundry:
        from reasoning_embed.models.tiny import build_tiny_backbone

        print(f"[reasoning-embed] building tiny backbone '{variant}' at {path} (random init, offline, once)")
        offset = FOUNDRY_VARIANTS.index(variant) if variant in FOUNDRY_VARIANTS else 0  # distinct random inits
        return str(build_tiny_backbone(path, corpus_dir=corpus_dir, **{**tiny, "seed": int(tiny.get("seed", 0)) + offset}))
    from reasoning_embed.foundry.build import build_triple

    if corpus_dir is None:
        raise BackboneNotAvailableError(f"tiny backbone {path!r} is missing and no corpus_dir was given to build it")
    if target.name != f"tiny_{variant}":
        raise BackboneNotAvailableError(
            f"tiny backbone path {path!r} must end in 'tiny_{variant}' for the foundry to build it "
            f"(it writes <dir>/tiny_base, tiny_rlvr, tiny_sft)")
    why = "a random-init build is cached there" if target.is_dir() else "missing"
    print(f"[reasoning-embed] tiny_{variant} is {why}: building the base/rlvr/sft triple in {target.parent} "
          f"with the foundry (offline, once, ~5 min on one CPU core; python -m reasoning_embed.foundry)")
    spec = {k: tiny[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                 "intermediate_size", "tokenizer", "vocab_size") if k in tiny}
    cfg = {"model": spec, "seed": int(tiny.get("seed", 0))}
    cfg.update(tiny.get("foundry_overrides") or {})
    build_triple(target.parent, corpus_dir, cfg)
    return str(target)


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
