"""The encoder's default settings: read from ``conf/encoder/default.yaml``, the one place they are written.

``build_encoder`` (models), the one loader (``models.loading``) and the training config all take these, so
a setting changed in the YAML changes every way of building an encoder.
"""

from __future__ import annotations

from functools import lru_cache

# How an encoder reads text (what ``build_encoder`` takes besides the backbone, finetune and build switches)
ENCODER_KEYS = ("attention", "pooling", "normalize", "attn_implementation", "dtype", "max_query_length",
                "max_passage_length", "query_template", "prompt_boundary", "add_special_tokens")


@lru_cache(maxsize=1)
def _from_config() -> dict:
    import yaml

    from reasoning_embed import CONF_DIR

    path = CONF_DIR / "encoder" / "default.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [k for k in ENCODER_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"{path}: no default for {missing}")
    return {k: cfg[k] for k in ENCODER_KEYS}


def encoder_defaults() -> dict:
    """A fresh copy of the default encoder settings (``ENCODER_KEYS`` -> value)."""
    return dict(_from_config())
