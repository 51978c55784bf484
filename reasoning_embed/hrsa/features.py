"""Layer-wise features of two models over the same texts, in memory that does not grow with tokens x layers.

Each model is read with its own attention mode (``causal`` for a base LLM as pre-trained,
``bidirectional`` for an embedding model); :func:`resolve_attention` turns ``auto`` into one of them
from the model's ``config.json`` (``is_causal: false`` = an exported embedding model).

:func:`extract_features` runs both models over the texts batch by batch and keeps

* a :class:`~reasoning_embed.hrsa.CKAAccumulator` fed with *every* kept row of every selected
  layer (float64 sufficient statistics; the rows themselves are dropped after each batch);
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
corrupt k-NN neighbour sets; they still count in the streamed CKA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from reasoning_embed.errors import TokenizerMismatchError

from .cka_stream import CKAAccumulator

LEVELS = ("token", "pooled")
POOLINGS = ("mean", "last_token", "first")
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
    """Token ids per text exactly as the encoder would feed them (its special-token rule, truncation)."""
    hf = encoder.tokenizer.hf
    return hf(list(texts), truncation=True, max_length=int(max_length),
              add_special_tokens=encoder.tokenizer.add_special_tokens)["input_ids"]


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
    cka: CKAAccumulator                  # all kept rows, all selected layer pairs
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


def _pad(ids: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, s = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((n, s), pad_id, dtype=torch.long)
    mask = torch.zeros((n, s), dtype=torch.long)
    offsets = []
    for r, x in enumerate(ids):
        o = s - len(x) if side == "left" else 0
        input_ids[r, o:o + len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[r, o:o + len(x)] = 1
        offsets.append(o)
    return input_ids, mask, offsets


def _context_keys(ids: list[int], causal: bool, text_key) -> list:
    """A hashable description of what the model sees at each position (equal keys = equal states)."""
    if not causal:
        return [(text_key, p) for p in range(len(ids))]
    keys, h = [], 0
    for t in ids:
        h = hash((h, int(t)))
        keys.append(h)
    return keys


def _pool_rows(hs: torch.Tensor, mask: torch.Tensor, kept: torch.Tensor, pooling: str) -> torch.Tensor:
    """hs: L x b x s x d, mask (attended) and kept (analysed) b x s bools -> L x b x d."""
    if pooling == "mean":
        w = kept.to(hs.dtype)
        return torch.einsum("lbsd,bs->lbd", hs, w) / w.sum(1).clamp_min(1)[None, :, None]
    rows = torch.arange(hs.shape[1], device=hs.device)
    m = mask.long()
    if pooling == "last_token":
        idx = m.shape[1] - 1 - m.flip(1).argmax(1)
    elif pooling == "first":
        idx = m.argmax(1)
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return hs[:, rows, idx]


@torch.no_grad()
def extract_features(enc_a, enc_b, texts, *, level: str = "token", pooling: str = "mean", max_length: int = 128,
                     batch_size: int = 16, exclude_special_tokens: bool = True, exclude_first_token: bool = False,
                     layers=None, max_sample: int = 20000, sample_tokens_per_text: int | None = None,
                     dedupe_sample: bool = True, probe_layer: int = -1, seed: int = 0, cka_debiased: bool = True,
                     cka_compute_dtype: torch.dtype = torch.float64, progress: bool = True,
                     names: tuple[str, str] = ("model_a", "model_b")) -> Extraction:
    """Run both encoders over ``texts``; see the module docstring. Models are used as they are (eval mode)."""
    import time

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_sample < 1:
        raise ValueError(f"max_sample must be >= 1, got {max_sample}")
    t0 = time.perf_counter()
    texts = list(texts)
    n_texts = len(texts)
    ids_a = tokenize(enc_a, texts, max_length)
    ids_b = tokenize(enc_b, texts, max_length)
    tok_report = compare_tokenizers(enc_a.tokenizer.hf, enc_b.tokenizer.hf, ids_a, ids_b)
    same_ids = tok_report["same_ids_on_texts"]
    if level == "token" and not same_ids:
        i = tok_report["first_differing_text"]
        raise TokenizerMismatchError(
            f"level=token needs the same tokenization in both models, but {names[0]} and {names[1]} tokenize "
            f"{tok_report['n_texts_differing']} of {n_texts} texts differently (first: text {i}, "
            f"{len(ids_a[i])} vs {len(ids_b[i])} tokens; vocabularies {tok_report['vocab_size_a']} vs "
            f"{tok_report['vocab_size_b']} ids, same vocab: {tok_report['same_vocab']}). Token rows cannot be "
            f"paired; compare text-level pooled representations instead with level=pooled.")

    specials_a = set(enc_a.tokenizer.hf.all_special_ids)
    specials_b = set(enc_b.tokenizer.hf.all_special_ids)
    if same_ids:
        specials_a = specials_b = specials_a | specials_b
    kept_a = [kept_positions(x, specials_a, exclude_special_tokens, exclude_first_token) for x in ids_a]
    kept_b = [kept_positions(x, specials_b, exclude_special_tokens, exclude_first_token) for x in ids_b]
    text_ok = np.array([len(a) > 0 and len(b) > 0 for a, b in zip(kept_a, kept_b)], dtype=bool)
    if not text_ok.any():
        raise ValueError("no text has a kept token in both models (all excluded or empty)")

    # ---- the sample: texts in a seeded random order, whole (or per-text capped), identical in both models
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_texts)
    both_causal = enc_a.attention == "causal" and enc_b.attention == "causal"
    seen_keys: set = set()
    slots: dict[int, tuple[int, np.ndarray]] = {}     # text -> (offset, positions in its ids)
    n_sample = n_dup = 0
    for t in order:
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

    # ---- layer counts and widths from one short forward pass per model
    first_ok = int(np.flatnonzero(text_ok)[0])

    def shape(enc, ids):
        x = torch.as_tensor([ids[:8]], device=enc.device)
        hs = enc.hidden_states(x, torch.ones_like(x))
        return len(hs), hs[0].shape[-1]

    def states(enc, ids, side):
        input_ids, mask, offs = _pad(ids, enc.tokenizer.hf.pad_token_id, side)
        hs = enc.hidden_states(input_ids.to(enc.device), mask.to(enc.device))
        return hs, mask, offs

    (na, d_a), (nb, d_b) = shape(enc_a, ids_a[first_ok]), shape(enc_b, ids_b[first_ok])
    la, lb = select_layers(na, layers), select_layers(nb, layers)
    pa, pb = select_layers(na, [probe_layer])[0], select_layers(nb, [probe_layer])[0]
    La, Lb = len(la), len(lb)
    sample_a = torch.zeros(La, n_sample, d_a)
    sample_b = torch.zeros(Lb, n_sample, d_b)
    sample_text = torch.full((n_sample,), -1, dtype=torch.long)
    sample_pos = torch.full((n_sample,), -1, dtype=torch.long)
    pooled_a = torch.full((n_texts, d_a), float("nan"))
    pooled_b = torch.full((n_texts, d_b), float("nan"))
    max_a, max_b = torch.zeros(La, d_a), torch.zeros(Lb, d_b)
    first_a, first_b = torch.zeros(La, d_a), torch.zeros(Lb, d_b)
    acc = CKAAccumulator(debiased=cka_debiased, compute_dtype=cka_compute_dtype)

    was = (enc_a.training, enc_b.training)
    enc_a.eval()
    enc_b.eval()
    todo = [int(t) for t in np.flatnonzero(text_ok)]
    todo.sort(key=lambda t: -len(ids_a[t]))                # longest first: little padding
    batches = range(0, len(todo), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"hrsa {level} features", unit="batch", total=math.ceil(len(todo) / batch_size))
    reuse = enc_b is enc_a and same_ids and la == lb and pa == pb
    n_rows = n_nonpad = 0
    for start in batches:
        idx = todo[start:start + batch_size]
        out = {}
        for tag, enc, ids, kept in (("a", enc_a, ids_a, kept_a), ("b", enc_b, ids_b, kept_b)):
            if tag == "b" and reuse:                           # the same model object read the same way
                out["b"] = out["a"]
                max_b.copy_(max_a)
                first_b.copy_(first_a)
                pooled_b[idx] = pooled_a[idx]
                continue
            side = enc.tokenizer.hf.padding_side
            hs, mask, offs = states(enc, [ids[t] for t in idx], side)
            sel = la if tag == "a" else lb
            H = torch.stack([hs[i] for i in sel]).float()          # L x b x s x d
            keep = torch.zeros_like(mask, dtype=torch.bool)
            for r, t in enumerate(idx):
                keep[r, torch.as_tensor(kept[t] + offs[r], dtype=torch.long)] = True
            keep = keep.to(H.device)
            maskd = mask.to(H.device).bool()
            out[tag] = (H, keep, maskd, offs)
            # massive activations: every non-pad token, and first tokens
            mx = H.abs().masked_fill(~maskd[None, :, :, None], 0).amax(dim=(1, 2)).cpu()
            first = torch.as_tensor(offs, device=H.device)
            fx = H[:, torch.arange(len(idx), device=H.device), first].abs().amax(1).cpu()
            if tag == "a":
                torch.maximum(max_a, mx, out=max_a)
                torch.maximum(first_a, fx, out=first_a)
            else:
                torch.maximum(max_b, mx, out=max_b)
                torch.maximum(first_b, fx, out=first_b)
            pooled = _pool_rows(torch.stack([hs[pa if tag == "a" else pb]]).float(), maskd, keep, pooling)[0].cpu()
            (pooled_a if tag == "a" else pooled_b)[idx] = pooled
        Ha, keep_a_m, mask_a, offs_a = out["a"]
        Hb, keep_b_m, _, offs_b = out["b"]
        n_nonpad += int(mask_a.sum())
        if level == "token":
            xa, xb = Ha[:, keep_a_m], Hb[:, keep_b_m]               # L x rows x d, same rows (same ids)
            acc.update(xa, xb)
            n_rows += xa.shape[1]
            for r, t in enumerate(idx):
                if t in slots:
                    off, pos = slots[t]
                    m = len(pos)
                    sample_a[:, off:off + m] = Ha[:, r, torch.as_tensor(pos + offs_a[r])].cpu()
                    sample_b[:, off:off + m] = Hb[:, r, torch.as_tensor(pos + offs_b[r])].cpu()
                    sample_text[off:off + m] = t
                    sample_pos[off:off + m] = torch.as_tensor(pos)
        else:
            pa_rows = _pool_rows(Ha, mask_a, keep_a_m, pooling)     # L x b x d
            pb_rows = _pool_rows(Hb, out["b"][2], keep_b_m, pooling)
            acc.update(pa_rows, pb_rows)
            n_rows += pa_rows.shape[1]
            for r, t in enumerate(idx):
                if t in slots:
                    off = slots[t][0]
                    sample_a[:, off] = pa_rows[:, r].cpu()
                    sample_b[:, off] = pb_rows[:, r].cpu()
                    sample_text[off] = t
        del out, Ha, Hb
    enc_a.train(was[0])
    enc_b.train(was[1])

    counts = {
        "texts": n_texts, "texts_used": int(text_ok.sum()), "texts_without_kept_tokens": int((~text_ok).sum()),
        "tokens_nonpad": n_nonpad,
        "tokens_kept": int(sum(len(kept_a[t]) for t in todo)),
        "tokens_kept_b": int(sum(len(kept_b[t]) for t in todo)),
        "rows_streamed": n_rows, "sample_rows": n_sample, "sample_texts": len(slots),
        "sample_duplicates_skipped": n_dup, "max_sample": int(max_sample),
        "sample_tokens_per_text": sample_tokens_per_text,
    }
    return Extraction(level=level, pooling=pooling, layers_a=la, layers_b=lb, d_a=d_a, d_b=d_b, cka=acc,
                      sample_a=sample_a, sample_b=sample_b, sample_text=sample_text, sample_pos=sample_pos,
                      pooled_a=pooled_a, pooled_b=pooled_b, probe_layer=(pa, pb), text_ok=torch.from_numpy(text_ok),
                      max_abs_a=max_a, max_abs_b=max_b, max_abs_first_a=first_a, max_abs_first_b=first_b,
                      counts=counts, tokenizers=tok_report, seconds=time.perf_counter() - t0)
