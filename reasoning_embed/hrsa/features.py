"""Layer-wise features of two models over the same texts, in memory that does not grow with tokens x layers.

Each model is read with its own attention mode (``causal`` for a base LLM as pre-trained,
``bidirectional`` for an embedding model); :func:`resolve_attention` turns ``auto`` into one of them
from the model's ``config.json`` (``is_causal: false`` = an exported embedding model).

:func:`extract_features` runs each model over the texts once into the feature cache
(:mod:`.feature_cache`: hidden states on disk, reused by later runs; batches from the one encode
loop's pieces in :mod:`reasoning_embed.models.encode`) and reads it back to keep

* the linear CKA (biased and debiased) of *every* kept row of every selected layer pair, computed
  by :func:`~reasoning_embed.hrsa.cka_blocked.cka_matrix_blocked` in layer blocks and row chunks
  that fit ``memory_budget``;
* a seeded **sample** of rows, identical for both models, for the metrics that need rows
  (k-NN, Procrustes, dimension-wise correlation, nulls): at most ``max_sample`` rows, drawn **by
  text** (texts in a seeded random order, all their kept tokens or ``sample_tokens_per_text`` of
  them) so every row knows its text (``sample_text``) for text-level bootstrap, permutation and
  held-out splits; any prefix of the sample is itself a random by-text subsample;
* pooled features of every text at ``probe_layer`` (for the cross-model probe);
* per layer the running max |x| per dimension over all non-pad tokens and over first tokens
  (massive activations, also of tokens excluded from the analysis).

``level="token"``: rows are tokens; the two tokenizers must split every text identically
(:class:`~reasoning_embed.errors.TokenizerMismatchError` otherwise). ``level="pooled"``: rows are
texts (one pooled vector per text and layer), which works with different tokenizers.

Kept tokens: attended (non-pad) tokens, minus special tokens (``exclude_special_tokens``) and the
first token of each text (``exclude_first_token``, the usual attention sink). Sample rows whose
model input is identical to an earlier row's in *both* models (same token prefix when both read
causally, e.g. the ``def`` that opens many code texts) are left out of the sample
(``dedupe_sample``): they would be near-duplicate rows (equal up to batch-dependent rounding), which
corrupt k-NN neighbour sets; they still count in the CKA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from reasoning_embed.errors import TokenizerMismatchError
from reasoning_embed.models.pooling import POOLING_MODES

from .cka_blocked import BlockedCKA, TensorSource, cka_matrix_blocked
from .feature_cache import STORAGE, extract_states

LEVELS = ("token", "pooled")
POOLINGS = POOLING_MODES  # the encoder's pooling names
__all__ = ["Extraction", "extract_features", "resolve_attention", "tokenize", "compare_tokenizers",
           "kept_positions", "select_layers", "diagonal_pairs", "LEVELS", "POOLINGS"]


# ----------------------------------------------------------------------------------------- models
def resolve_attention(path: str, requested: str = "auto", revision: str | None = None) -> tuple[str, str]:
    """``(mode, why)``: ``auto`` is ``bidirectional`` iff the model's config.json says ``is_causal: false``."""
    if requested in ("causal", "bidirectional"):
        return requested, "configured"
    if requested != "auto":
        raise ValueError(f"attention must be auto, causal or bidirectional, got {requested!r}")
    from transformers import PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    if raw.get("is_causal") is False:
        return "bidirectional", "auto: config.json has is_causal=false (an embedding model)"
    return "causal", "auto: config.json has no is_causal=false (a base LLM, read as pre-trained)"


# ------------------------------------------------------------------------------------- tokenizing
def tokenize(encoder, texts, max_length: int) -> list[list[int]]:
    """Token ids per text exactly as the encoder would feed them (its special-token rule, truncation);
    an empty text stays empty (it has no row to compare)."""
    from reasoning_embed.models.encode import token_ids

    return token_ids(encoder.tokenizer, list(texts), None, int(max_length))


def compare_tokenizers(tok_a, tok_b, ids_a, ids_b) -> dict:
    """Do both tokenizers give the same ids on these texts (and have the same vocabulary)?"""
    differ = [i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if list(a) != list(b)]
    try:
        same_vocab = tok_a.get_vocab() == tok_b.get_vocab()
    except Exception:  # noqa: BLE001 - some tokenizers cannot list their vocabulary
        same_vocab = None
    return {"same_ids_on_texts": not differ, "n_texts_differing": len(differ),
            "first_differing_text": differ[0] if differ else None, "same_vocab": same_vocab,
            "vocab_size_a": len(tok_a), "vocab_size_b": len(tok_b)}


def kept_positions(ids: list[int], special_ids: set[int], exclude_special: bool, exclude_first: bool) -> np.ndarray:
    keep = np.ones(len(ids), dtype=bool)
    if exclude_special and special_ids:
        keep &= ~np.isin(np.asarray(ids, dtype=np.int64), np.fromiter(special_ids, dtype=np.int64))
    if exclude_first and len(ids):
        keep[0] = False
    return np.flatnonzero(keep)


def select_layers(n_states: int, layers) -> list[int]:
    """Indices into the hidden-state tuple (embedding output = 0); ``None`` = all, negatives allowed."""
    if layers is None:
        return list(range(n_states))
    out = []
    for v in layers:
        i = int(v) + (n_states if int(v) < 0 else 0)
        if not 0 <= i < n_states:
            raise ValueError(f"layer {v} out of range for a model with {n_states} hidden states (0..{n_states - 1})")
        out.append(i)
    return out


def diagonal_pairs(La: int, Lb: int) -> list[tuple[int, int]]:
    """Matching layer positions: equal indices when La == Lb, else by relative depth."""
    if La == 1 or Lb == 1:
        return [(i, min(Lb - 1, i)) for i in range(La)]
    return [(i, int(round(i * (Lb - 1) / (La - 1)))) for i in range(La)]


# ------------------------------------------------------------------------------------- extraction
@dataclass
class Extraction:
    level: str
    pooling: str
    layers_a: list[int]                  # hidden-state indices (0 = embedding output)
    layers_b: list[int]
    d_a: int
    d_b: int
    cka: BlockedCKA                      # all kept rows, all selected layer pairs (compute(debiased), n)
    sample_a: torch.Tensor               # La x n_sample x d_a (float32, CPU)
    sample_b: torch.Tensor
    sample_text: torch.Tensor            # n_sample: index into `texts` of each sample row
    sample_pos: torch.Tensor             # n_sample: token position (-1 for pooled rows)
    pooled_a: torch.Tensor               # n_texts x d_a at probe_layer (nan rows for dropped texts)
    pooled_b: torch.Tensor
    probe_layer: tuple[int, int]         # hidden-state indices the pooled features come from
    text_ok: torch.Tensor                # n_texts bool: the text has kept tokens in both models
    max_abs_a: torch.Tensor              # La x d_a: max |x| over all non-pad tokens (incl. excluded ones)
    max_abs_b: torch.Tensor
    max_abs_first_a: torch.Tensor        # La x d_a: max |x| over first tokens
    max_abs_first_b: torch.Tensor
    counts: dict = field(default_factory=dict)
    tokenizers: dict = field(default_factory=dict)
    seconds: float = 0.0
    cache: dict = field(default_factory=dict)   # per model: the feature-cache entry and whether it was reused


def _tokenize_pair(enc_a, enc_b, texts, level, max_length, names):
    """Token ids of both models and the tokenizer report; token level needs identical ids."""
    ids_a = tokenize(enc_a, texts, max_length)
    ids_b = tokenize(enc_b, texts, max_length)
    rep = compare_tokenizers(enc_a.tokenizer.hf, enc_b.tokenizer.hf, ids_a, ids_b)
    if level == "token" and not rep["same_ids_on_texts"]:
        i = rep["first_differing_text"]
        raise TokenizerMismatchError(
            f"level=token needs the same tokenization in both models, but {names[0]} and {names[1]} tokenize "
            f"{rep['n_texts_differing']} of {len(texts)} texts differently (first: text {i}, "
            f"{len(ids_a[i])} vs {len(ids_b[i])} tokens; vocabularies {rep['vocab_size_a']} vs "
            f"{rep['vocab_size_b']} ids, same vocab: {rep['same_vocab']}). Token rows cannot be "
            f"paired; compare text-level pooled representations instead with level=pooled.")
    return ids_a, ids_b, rep


def _kept_pair(enc_a, enc_b, ids_a, ids_b, same_ids, exclude_special, exclude_first):
    specials_a = set(enc_a.tokenizer.hf.all_special_ids)
    specials_b = set(enc_b.tokenizer.hf.all_special_ids)
    if same_ids:
        specials_a = specials_b = specials_a | specials_b
    kept_a = [kept_positions(x, specials_a, exclude_special, exclude_first) for x in ids_a]
    kept_b = [kept_positions(x, specials_b, exclude_special, exclude_first) for x in ids_b]
    text_ok = np.array([len(a) > 0 and len(b) > 0 for a, b in zip(kept_a, kept_b)], dtype=bool)
    if not text_ok.any():
        raise ValueError("no text has a kept token in both models (all excluded or empty)")
    return kept_a, kept_b, text_ok


def _plan_sample(ids_a, ids_b, kept_a, text_ok, level, both_causal, max_sample, sample_tokens_per_text,
                 dedupe_sample, seed):
    """The sample: texts in a seeded random order, whole (or per-text capped), identical in both models.

    Returns ``(slots, n_sample, n_dup)`` with ``slots[text] = (offset in the sample, token positions)``.
    """
    rng = np.random.default_rng(seed)
    seen_keys: set = set()
    slots: dict[int, tuple[int, np.ndarray]] = {}
    n_sample = n_dup = 0
    for t in rng.permutation(len(ids_a)):
        if not text_ok[t] or n_sample >= max_sample:
            continue
        if level == "pooled":
            if dedupe_sample:                              # identical (truncated) inputs = identical rows
                key = (tuple(ids_a[t]), tuple(ids_b[t]))
                if key in seen_keys:
                    n_dup += 1
                    continue
                seen_keys.add(key)
            slots[int(t)] = (n_sample, np.array([-1]))
            n_sample += 1
            continue
        pos = kept_a[t]
        if dedupe_sample:
            keys = _context_keys(ids_a[t], both_causal, hash(tuple(ids_a[t])))
            fresh = [p for p in pos if keys[p] not in seen_keys]
            n_dup += len(pos) - len(fresh)
            pos = np.asarray(fresh, dtype=np.int64)
        if sample_tokens_per_text is not None and len(pos) > sample_tokens_per_text:
            pos = np.sort(rng.choice(pos, size=int(sample_tokens_per_text), replace=False))
        if len(pos) == 0 or n_sample + len(pos) > max_sample:
            continue                                       # skip a text that does not fit; smaller ones may
        if dedupe_sample:
            seen_keys.update(keys[p] for p in pos)
        slots[int(t)] = (n_sample, pos)
        n_sample += len(pos)
    return slots, n_sample, n_dup


def _context_keys(ids: list[int], causal: bool, text_key) -> list:
    """A hashable description of what the model sees at each position (equal keys = equal states)."""
    if not causal:
        return [(text_key, p) for p in range(len(ids))]
    keys, h = [], 0
    for t in ids:
        h = hash((h, int(t)))
        keys.append(h)
    return keys


def _layer_counts(enc, ids) -> tuple[int, int]:
    """(number of hidden states, width) from one short forward pass."""
    x = torch.as_tensor([ids[:8]], device=enc.device)
    hs = enc.hidden_states(x, torch.ones_like(x))
    return len(hs), hs[0].shape[-1]


def _token_rows(states, kept, texts) -> np.ndarray:
    """Stored row indices of the kept tokens of ``texts`` (in text order)."""
    parts = [states.offsets[t] + kept[t] for t in texts]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _pooled(states, layer: int, texts, kept, pooling: str, chunk_rows: int = 65536) -> torch.Tensor:
    """Pooled vector per text (len(texts) x d, float32) of one hidden-state layer, read from the cache:
    mean over the kept tokens, or the last / first attended token."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    lp = states.layer_pos(layer)
    off = states.offsets
    if pooling != "mean":
        pick = [off[t + 1] - 1 if pooling == "last_token" else off[t] for t in texts]
        return states.gather(lp, np.asarray(pick, dtype=np.int64))
    out = torch.empty(len(texts), states.dim)
    start = 0
    while start < len(texts):                  # texts in chunks of about chunk_rows kept rows
        stop, rows = start, 0
        while stop < len(texts) and (stop == start or rows + len(kept[texts[stop]]) <= chunk_rows):
            rows += len(kept[texts[stop]])
            stop += 1
        part = texts[start:stop]
        x = states.gather(lp, _token_rows(states, kept, part)).double()
        seg = torch.from_numpy(np.repeat(np.arange(len(part)), [len(kept[t]) for t in part]))
        sums = torch.zeros(len(part), states.dim, dtype=torch.float64).index_add_(0, seg, x)
        counts = torch.as_tensor([max(1, len(kept[t])) for t in part], dtype=torch.float64)
        out[start:stop] = (sums / counts[:, None]).float()
        start = stop
    return out


def _analysis_sources(st_a, st_b, la, lb, kept_a, kept_b, texts_ok, level, pooling):
    """Row sources of the analysed rows: kept tokens read from the cache, or pooled texts in memory."""
    if level == "token":
        return (st_a.source(la, _token_rows(st_a, kept_a, texts_ok)),
                st_b.source(lb, _token_rows(st_b, kept_b, texts_ok)))
    pa = torch.stack([_pooled(st_a, v, texts_ok, kept_a, pooling) for v in la])
    pb = torch.stack([_pooled(st_b, v, texts_ok, kept_b, pooling) for v in lb])
    return TensorSource(pa), TensorSource(pb)


def _read_sample(st, layers, slots, n_sample, level, src, texts_ok) -> torch.Tensor:
    """L x n_sample x d float32: the sample rows (token level: from the cache; pooled: the pooled rows)."""
    out = torch.zeros(len(layers), n_sample, st.dim)
    items = sorted(slots.items(), key=lambda kv: kv[1][0])
    if level == "pooled":
        where = {t: i for i, t in enumerate(texts_ok)}
        rows = torch.as_tensor([where[t] for t, _ in items], dtype=torch.long)
        for k in range(len(layers)):
            out[k] = src.layers[k][rows]
        return out
    stored = np.concatenate([st.offsets[t] + pos for t, (_, pos) in items]) if items else np.zeros(0, np.int64)
    for k, v in enumerate(layers):
        out[k] = st.gather(st.layer_pos(v), stored)
    return out


def _sample_index(slots, n_sample):
    sample_text = torch.full((n_sample,), -1, dtype=torch.long)
    sample_pos = torch.full((n_sample,), -1, dtype=torch.long)
    for t, (off, pos) in slots.items():
        m = len(pos)
        sample_text[off:off + m] = t
        sample_pos[off:off + m] = torch.as_tensor(pos)
    return sample_text, sample_pos


def _row_texts(texts_ok, kept_a, level):
    """The text of every analysed row (token level), or None (pooled: each row is its own text)."""
    if level != "token":
        return None
    return torch.from_numpy(np.repeat(np.asarray(texts_ok, dtype=np.int64), [len(kept_a[t]) for t in texts_ok]))


def _plan(la, lb, d_a, d_b, texts_ok, kept_a, ids_a, level, cache_dtype, compute_dtype, memory_budget, device,
          cache_dir, route="auto", jackknife_blocks=0):
    """The CKA's blocks for the rows to come, logged before any work starts (with the extraction's size)."""
    import logging

    from .cka_blocked import gemm_gflops
    from .cka_gram import choose_plan

    n = sum(len(kept_a[t]) for t in texts_ok) if level == "token" else len(texts_ok)
    storage = STORAGE[cache_dtype][0].itemsize if level == "token" else 4
    plan = choose_plan(len(la), len(lb), d_a, d_b, n, memory_budget, compute_dtype, storage_bytes=storage,
                       gflops=gemm_gflops(compute_dtype, device or "cpu"), route=route,
                       jackknife_blocks=jackknife_blocks)
    tokens = sum(len(ids_a[t]) for t in texts_ok)
    logging.getLogger("reasoning_embed.hrsa").info(
        "plan: hidden states of %d texts (%d tokens) per model into the feature cache %s (%s), then %s",
        len(texts_ok), tokens, cache_dir or "(temporary)", cache_dtype, plan.describe())
    return plan


def _model_states(enc, ids, layers, probe, cache_dir, batch_size, storage, progress, name):
    stored = sorted(set(layers) | {probe})
    return extract_states(enc, ids, stored, cache_dir=cache_dir, batch_size=batch_size, storage=storage,
                          progress=progress, name=name)


@torch.no_grad()
def extract_features(enc_a, enc_b, texts, *, level: str = "token", pooling: str = "mean", max_length: int = 128,
                     batch_size: int = 16, exclude_special_tokens: bool = True, exclude_first_token: bool = False,
                     layers=None, max_sample: int = 20000, sample_tokens_per_text: int | None = None,
                     dedupe_sample: bool = True, probe_layer: int = -1, seed: int = 0, cka_debiased: bool = True,
                     cka_compute_dtype: torch.dtype = torch.float64, progress: bool = True,
                     names: tuple[str, str] = ("model_a", "model_b"), cache_dir=None, cache_dtype: str = "float32",
                     memory_budget=None, device=None, cka_route: str = "auto", cka_jackknife: bool = False,
                     alpha: float = 0.05) -> Extraction:
    """Run both encoders over ``texts`` (through the feature cache) and compute the streamed CKA; see the
    module docstring. ``cache_dir=None``: a temporary cache, removed on return. Models are used as they are.
    ``cka_route``: auto | feature | gram (:func:`~reasoning_embed.hrsa.cka_gram.choose_plan`); ``cka_jackknife``:
    every layer pair's jackknife interval over the texts, on all rows (Gram route, ``ext.cka.jackknife``)."""
    import tempfile
    import time

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_sample < 1:
        raise ValueError(f"max_sample must be >= 1, got {max_sample}")
    if cache_dtype not in STORAGE:
        raise ValueError(f"cache dtype must be one of {sorted(STORAGE)}, got {cache_dtype!r}")
    t0 = time.perf_counter()
    texts = list(texts)
    ids_a, ids_b, tok_report = _tokenize_pair(enc_a, enc_b, texts, level, max_length, names)
    kept_a, kept_b, text_ok = _kept_pair(enc_a, enc_b, ids_a, ids_b, tok_report["same_ids_on_texts"],
                                         exclude_special_tokens, exclude_first_token)
    both_causal = enc_a.attention == "causal" and enc_b.attention == "causal"
    slots, n_sample, n_dup = _plan_sample(ids_a, ids_b, kept_a, text_ok, level, both_causal, max_sample,
                                          sample_tokens_per_text, dedupe_sample, seed)
    first_ok = int(np.flatnonzero(text_ok)[0])
    (na, d_a), (nb, d_b) = _layer_counts(enc_a, ids_a[first_ok]), _layer_counts(enc_b, ids_b[first_ok])
    la, lb = select_layers(na, layers), select_layers(nb, layers)
    pa, pb = select_layers(na, [probe_layer])[0], select_layers(nb, [probe_layer])[0]
    texts_ok = [int(t) for t in np.flatnonzero(text_ok)]
    row_texts = _row_texts(texts_ok, kept_a, level)
    n_blocks = 0
    if cka_jackknife:
        from .intervals import jackknife_blocks

        n_rows = len(row_texts) if row_texts is not None else len(texts_ok)
        n_blocks = len(jackknife_blocks(row_texts, n_rows, seed=seed))
    plan = _plan(la, lb, d_a, d_b, texts_ok, kept_a, ids_a, level, cache_dtype, cka_compute_dtype, memory_budget,
                 device, cache_dir, cka_route, n_blocks)
    with tempfile.TemporaryDirectory(prefix="hrsa_features_") as tmp:
        root = cache_dir if cache_dir is not None else tmp
        st_a = _model_states(enc_a, ids_a, la, pa, root, batch_size, cache_dtype, progress, names[0])
        st_b = _model_states(enc_b, ids_b, lb, pb, root, batch_size, cache_dtype, progress, names[1])
        src_a, src_b = _analysis_sources(st_a, st_b, la, lb, kept_a, kept_b, texts_ok, level, pooling)
        cka = cka_matrix_blocked(src_a, src_b, debiased=cka_debiased, plan=plan, compute_dtype=cka_compute_dtype,
                                 device=device, progress=progress, log=lambda msg: None, jackknife=cka_jackknife,
                                 groups=row_texts, seed=seed, alpha=alpha)
        sample_a = _read_sample(st_a, la, slots, n_sample, level, src_a, texts_ok)
        sample_b = _read_sample(st_b, lb, slots, n_sample, level, src_b, texts_ok)
        pooled_a = torch.full((len(texts), d_a), float("nan"))
        pooled_b = torch.full((len(texts), d_b), float("nan"))
        pooled_a[texts_ok] = _pooled(st_a, pa, texts_ok, kept_a, pooling)
        pooled_b[texts_ok] = _pooled(st_b, pb, texts_ok, kept_b, pooling)
        pos_a, pos_b = [st_a.layer_pos(v) for v in la], [st_b.layer_pos(v) for v in lb]
        maxima = (st_a.max_abs[pos_a], st_b.max_abs[pos_b], st_a.max_abs_first[pos_a], st_b.max_abs_first[pos_b])
        cache = {"model_a": {"entry": str(st_a.path) if cache_dir is not None else None, "reused": st_a.reused},
                 "model_b": {"entry": str(st_b.path) if cache_dir is not None else None, "reused": st_b.reused},
                 "dtype": cache_dtype, "memory_budget": str(memory_budget) if memory_budget else None,
                 "plan": cka.plan.describe()}
        st_a.file.close()
        st_b.file.close()
    sample_text, sample_pos = _sample_index(slots, n_sample)
    counts = {
        "texts": len(texts), "texts_used": len(texts_ok), "texts_without_kept_tokens": int((~text_ok).sum()),
        "tokens_nonpad": int(sum(len(ids_a[t]) for t in texts_ok)),
        "tokens_kept": int(sum(len(kept_a[t]) for t in texts_ok)),
        "tokens_kept_b": int(sum(len(kept_b[t]) for t in texts_ok)),
        "rows_streamed": cka.n, "sample_rows": n_sample, "sample_texts": len(slots),
        "sample_duplicates_skipped": n_dup, "max_sample": int(max_sample),
        "sample_tokens_per_text": sample_tokens_per_text,
    }
    return Extraction(level=level, pooling=pooling, layers_a=la, layers_b=lb, d_a=d_a, d_b=d_b, cka=cka,
                      sample_a=sample_a, sample_b=sample_b, sample_text=sample_text, sample_pos=sample_pos,
                      pooled_a=pooled_a, pooled_b=pooled_b, probe_layer=(pa, pb), text_ok=torch.from_numpy(text_ok),
                      max_abs_a=maxima[0], max_abs_b=maxima[1], max_abs_first_a=maxima[2], max_abs_first_b=maxima[3],
                      counts=counts, tokenizers=tok_report, seconds=time.perf_counter() - t0, cache=cache)
