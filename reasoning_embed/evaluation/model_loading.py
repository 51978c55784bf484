"""Turn "the model to evaluate" into an ``Encoder``: a run directory, its ``model/`` export, any Hugging Face
model directory or hub id (a backbone, read with the configured attention mode and pooling), or an
``Encoder`` object (what training passes at the end of a run).

- run directory (has ``model/config.json``): the export is loaded; pooling, normalisation, attention, the
  query template and the query/passage length limits come from the run's ``.hydra/config.yaml`` (the
  encoder it was trained with), falling back to what the export's sentence-transformers files say;
- export directory (``config.json`` + ``modules.json``): pooling and normalisation from the
  sentence-transformers modules, attention from ``config.json``'s ``is_causal``, lengths from
  ``sentence_bert_config.json``;
- anything else (plain HF directory or hub id): a backbone, read with ``read`` (attention, pooling, ...).

Keys of ``read`` that are not null override what the model carries (e.g. ``max_passage_length``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reasoning_embed.evaluation.errors import EvaluationConfigError

log = logging.getLogger("reasoning_embed.evaluation")

_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last_token",
               "pooling_mode_cls_token": "first"}
_ST_POOLING_MODE = {"mean": "mean", "lasttoken": "last_token", "cls": "first"}
_ENCODER_KEYS = ("attention", "pooling", "normalize", "attn_implementation", "dtype", "max_query_length",
                 "max_passage_length", "query_template", "add_special_tokens")
BACKBONE_DEFAULTS = dict(attention="bidirectional", pooling="mean", normalize=True, attn_implementation="sdpa",
                         dtype="float32", max_query_length=512, max_passage_length=512,
                         query_template="Instruct: {instruction}\nQuery: ", add_special_tokens=False)


def _export_settings(model_dir: Path) -> dict:
    """What a sentence-transformers export says about pooling, normalisation, length and attention
    (sentence-transformers 6 layout, with the pre-6 keys as a fallback)."""
    out: dict = {}
    modules_file = model_dir / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pcfg_file = model_dir / m.get("path", "") / "config.json"
                if pcfg_file.exists():
                    pcfg = json.loads(pcfg_file.read_text())
                    mode = pcfg.get("pooling_mode")
                    if isinstance(mode, str) and mode in _ST_POOLING_MODE:
                        out["pooling"] = _ST_POOLING_MODE[mode]
                    for key, value in _ST_POOLING.items():
                        if pcfg.get(key):
                            out["pooling"] = value
    max_len = None
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
    tok_cfg = model_dir / "tokenizer_config.json"
    if not max_len and tok_cfg.exists():  # sentence-transformers 6 keeps max_seq_length here
        max_len = json.loads(tok_cfg.read_text()).get("model_max_length")
    if max_len and int(max_len) < 1_000_000:
        out["max_query_length"] = out["max_passage_length"] = int(max_len)
    config = model_dir / "config.json"
    if config.exists():
        is_causal = json.loads(config.read_text()).get("is_causal")
        if is_causal is not None:
            out["attention"] = "causal" if is_causal else "bidirectional"
    return out


def _run_settings(run_dir: Path) -> dict:
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if not cfg_file.exists():
        return {}
    from omegaconf import OmegaConf

    enc = OmegaConf.load(cfg_file).get("encoder") or {}
    out = {}
    for key in _ENCODER_KEYS:
        try:
            value = enc.get(key)
        except Exception:  # an interpolation that only resolves inside the training run
            continue
        if value is not None:
            out[key] = value
    return out


def describe_model_spec(spec) -> tuple[str, str]:
    """(kind, path) for a spec: kind is run | export | backbone."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and (path / "model" / "config.json").is_file():
        return "run", str(path / "model")
    if path.is_dir() and (path / "config.json").is_file():
        return ("export" if (path / "modules.json").is_file() else "backbone"), str(path)
    if path.exists() or str(spec).startswith((".", "/", "~")):
        raise EvaluationConfigError(
            f"model {str(spec)!r} is neither a run directory (with model/config.json), a model export "
            f"(config.json + modules.json) nor a Hugging Face model directory")
    return "backbone", str(spec)


def load_encoder(spec, read: dict | None = None, device: str = "auto"):
    """An ``Encoder`` for ``spec`` (see module docstring), in eval mode on ``device``."""
    import torch

    from reasoning_embed.models.encoder import Encoder, build_encoder

    if isinstance(spec, Encoder):
        return spec
    read = {k: v for k, v in dict(read or {}).items() if v is not None and k in _ENCODER_KEYS}
    kind, path = describe_model_spec(spec)
    settings = dict(BACKBONE_DEFAULTS)
    if kind in ("run", "export"):
        settings.update(_export_settings(Path(path)))
        if kind == "run":
            settings.update(_run_settings(Path(path).parent))
    settings.update(read)
    name = Path(path).parent.name if kind == "run" else (Path(path).name if kind == "export" else path)
    log.info("loading %s %s with %s", kind, path, settings)
    encoder = build_encoder({"path": path, "name": name}, **settings)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = encoder.to(device).eval()
    encoder.spec_kind = kind
    return encoder
