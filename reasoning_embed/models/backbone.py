"""Finding and loading a decoder LLM backbone: a local directory or a hub id (offline-aware)."""

from __future__ import annotations

from pathlib import Path

from reasoning_embed.errors import BackboneNotAvailableError
from reasoning_embed.utils.hub import cached_snapshot, hub_cache_dir, hub_reachable, offline_reason


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
    if cached_snapshot(path, revision) is not None:
        return path
    why = offline_reason(("HF_HUB_OFFLINE",)) or (None if hub_reachable() else "huggingface.co is unreachable")
    if why:
        raise BackboneNotAvailableError(
            f"backbone {path!r} is not in the local Hugging Face cache ({hub_cache_dir()}) and {why}. "
            f"On a machine with network run `hf download {path}` (or `huggingface-cli download {path}`) "
            f"and copy the cache here (or set HF_HOME), or set backbone.path to a local model directory.")
    return path


def load_backbone(path: str, attention: str = "bidirectional", attn_implementation: str = "sdpa",
                  dtype: str = "float32", revision: str | None = None, check: bool = True):
    """Load ``AutoModel`` (no LM head) + tokenizer with the attention mode set and verified."""
    import torch
    from transformers import AutoConfig, AutoModel

    from reasoning_embed.models.attention import check_attention, set_attention_mode

    if attn_implementation == "auto":
        attn_implementation = _best_attn_implementation()
    config = AutoConfig.from_pretrained(path, revision=revision)
    set_attention_mode(config, attention)
    model = AutoModel.from_pretrained(path, config=config, revision=revision, dtype=getattr(torch, dtype),
                                      attn_implementation=attn_implementation)
    tokenizer = load_tokenizer(path, revision)
    report = check_attention(model, attention, vocab_high=min(len(tokenizer), 1000)) if check else None
    return model, tokenizer, report


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str, revision: str | None = None):
    """``AutoTokenizer``, except where it replaced the pipeline the directory's ``tokenizer.json`` declares.

    transformers 5 loads the tokenizer of every qwen2-config model as ``Qwen2Tokenizer``, which keeps the
    vocabulary and merges but rebuilds Qwen's normaliser and pre-tokeniser. A directory that asks for the
    generic backend (``tokenizer_class`` ``TokenizersBackend``: the tiny backbones' ``bpe_code`` tokenizer, which
    lowercases and drops whitespace) then gets its own pipeline back, read from ``tokenizer.json`` as written.
    Hub models (which name their own class) load as transformers loads them, as sentence-transformers does."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return tokenizer
    declared = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    if declared not in GENERIC_TOKENIZER_CLASSES or not pipeline_replaced(tokenizer, folder / "tokenizer.json"):
        return tokenizer
    return PreTrainedTokenizerFast.from_pretrained(path, revision=revision)


def pre_tokenizer_of(tokenizer) -> dict | None:
    """The pre-tokeniser (how text is split into words) of a fast tokenizer, as its ``tokenizer.json`` writes it."""
    import json

    return json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")


def pipeline_replaced(tokenizer, tokenizer_json) -> bool:
    """Whether ``tokenizer`` pre-tokenises (splits words) differently from the pipeline in ``tokenizer_json``."""
    import json
    from pathlib import Path

    return pre_tokenizer_of(tokenizer) != json.loads(Path(tokenizer_json).read_text()).get("pre_tokenizer")


def _best_attn_implementation() -> str:
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
