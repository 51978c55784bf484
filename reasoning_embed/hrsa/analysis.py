"""All HRSA metrics on an :class:`~reasoning_embed.hrsa.features.Extraction`, as one JSON-able dict.

Which rows each metric sees (all recorded in the output):

* linear CKA (biased and debiased, all La x Lb layer pairs): every kept row, streamed;
* dimension-wise correlation (La x Lb, or the diagonal) and Procrustes (diagonal layer pairs,
  fitted on 1 - ``test_fraction`` of the sample's texts, scored on the held-out texts and in-sample):
  the whole sample;
* k-NN overlap (diagonal pairs): a seeded uniform subset of at most ``knn_max_rows`` sample rows
  (the paper samples tokens uniformly), rows exactly equal in both models collapsed;
* nulls and intervals (CKA and k-NN, diagonal pairs of ``stats_layers``): the *stats sample*, the
  same ``stats_tokens_per_text`` random tokens from each of at most ``stats_max_texts`` sample texts
  (token level; all sample texts at the pooled level), so every text is exchangeable with every
  other in the permutation null; intervals (:mod:`.intervals`) never resample copies (CKA: delete-a-block
  jackknife over texts; k-NN: split-sample variance over disjoint parts of the texts), permutations
  re-pair texts, and every score carries its null-calibrated value
  (:mod:`.calibration`); with ``stats_layers=all`` the best and mean CKA over the layer pairs are
  calibrated with one permutation shared by all layers;
* the probe: pooled features of every text at the last layer (``probe_layer``), stratified
  80/10/10 split of the texts whose class has at least ``probe_min_per_class`` texts.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from .features import Extraction, diagonal_pairs

__all__ = ["analyze", "dimcorr_matrix"]


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _mat(t: torch.Tensor) -> list:
    return [[_nan_to_none(float(v)) for v in row] for row in t.tolist()] if t.ndim == 2 else \
        [_nan_to_none(float(v)) for v in t.tolist()]


def dimcorr_matrix(Xs: torch.Tensor, Ys: torch.Tensor, eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean dimension-wise Pearson r for all La x Lb layer pairs, and the count of excluded columns.

    Equal per pair to :func:`~reasoning_embed.hrsa.dimension_wise_correlation` (same exclusion
    rule: a column with std <= eps * max column std, or 0, in either layer is excluded). Cost
    La*Lb*n*d, one standardisation per layer, no temporary larger than one layer.
    """
    Xs, Ys = Xs.to(torch.float64), Ys.to(torch.float64)
    Xc = Xs - Xs.mean(1, keepdim=True)
    Yc = Ys - Ys.mean(1, keepdim=True)
    sx, sy = torch.linalg.vector_norm(Xc, dim=1), torch.linalg.vector_norm(Yc, dim=1)        # L x d
    okx = (sx > eps * sx.amax(1, keepdim=True)) & (sx > 0)
    oky = (sy > eps * sy.amax(1, keepdim=True)) & (sy > 0)
    Zx = torch.where(okx[:, None, :], Xc / sx.clamp_min(1e-300)[:, None, :], torch.zeros_like(Xc))
    Zy = torch.where(oky[:, None, :], Yc / sy.clamp_min(1e-300)[:, None, :], torch.zeros_like(Yc))
    r = torch.stack([torch.stack([torch.linalg.vecdot(Zx[i], Zy[j], dim=0) for j in range(Ys.shape[0])])
                     for i in range(Xs.shape[0])]).clamp(-1.0, 1.0)                         # La x Lb x d
    ok = okx[:, None, :] & oky[None, :, :]
    n_ok = ok.sum(-1)
    mean = torch.where(n_ok > 0, (r * ok).sum(-1) / n_ok.clamp_min(1), torch.full_like(n_ok, float("nan"),
                                                                                     dtype=torch.float64))
    return mean, (~ok).sum(-1)


def _stats_rows(ext: Extraction, tokens_per_text: int, max_texts: int, seed: int) -> torch.Tensor:
    """Indices of sample rows: ``tokens_per_text`` random rows of each of the first ``max_texts`` texts."""
    if ext.level == "pooled":
        return torch.arange(min(ext.sample_text.numel(), max_texts))
    rng = np.random.default_rng(seed + 1)
    st = ext.sample_text.numpy()
    _, first = np.unique(st, return_index=True)
    out = []
    for start in np.sort(first):                         # texts in sample order (a random order)
        t = st[start]
        rows = np.flatnonzero(st == t)
        if len(rows) >= tokens_per_text:
            out.append(np.sort(rng.choice(rows, size=tokens_per_text, replace=False)))
        if len(out) >= max_texts:
            break
    return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, dtype=torch.long)


def _proportion_interval(p: float, n: int, alpha: float) -> list:
    """Wilson interval of an accuracy measured on n test texts."""
    from reasoning_embed.utils.stats import wilson_interval

    if n <= 0 or p is None or not math.isfinite(p):
        return [None, None]
    return list(wilson_interval(int(round(p * n)), n, 1 - alpha))


def _probe(ext: Extraction, labels, cfg: dict, seed: int, alpha: float = 0.05) -> dict:
    from .probe import linear_probe_transfer, stratified_split

    if labels is None:
        return {"skipped": "the texts have no labels (label_field)"}
    ok = ext.text_ok.numpy()
    y = np.asarray([str(v) for v in labels], dtype=object)
    vals, counts = np.unique(y[ok], return_counts=True)
    classes = set(vals[counts >= cfg["min_per_class"]].tolist())
    rows = np.flatnonzero(ok & np.isin(y, list(classes)))
    if len(classes) < 2:
        return {"skipped": f"fewer than 2 classes with >= {cfg['min_per_class']} texts"}
    yk = y[rows]
    codes = {c: i for i, c in enumerate(sorted(classes))}
    yi = np.asarray([codes[v] for v in yk])
    tr, va, te = stratified_split(yi, tuple(cfg["split"]), seed=seed)
    A, B = ext.pooled_a[rows].double(), ext.pooled_b[rows].double()
    res = linear_probe_transfer(A[tr], yi[tr.numpy()], A[te], yi[te.numpy()], B[tr], B[te], seed=seed,
                                C=cfg["C"], max_iter=cfg["max_iter"])
    n_test = int(te.numel())
    out = {"metric": res.metric, "native": res.native, "raw_transfer": _nan_to_none(res.raw_transfer),
           "aligned_transfer": res.aligned_transfer, "b_own": res.b_own, "chance": res.chance,
           "shuffled": res.shuffled, "layer_a": ext.probe_layer[0], "layer_b": ext.probe_layer[1],
           "pooling": ext.pooling, "n_train": int(tr.numel()), "n_val_unused": int(va.numel()),
           "n_test": n_test, "classes": {c: int(n) for c, n in zip(vals, counts) if c in classes},
           "classes_dropped": int(len(vals) - len(classes)),
           "note": "probe on A's pooled features; raw = A's probe on B unchanged, aligned = after Procrustes "
                   "B->A fitted on train texts, b_own = B's own probe; the 10% validation split is unused "
                   "(no tuning); intervals: Wilson, over the n_test test texts"}
    if res.metric == "accuracy":
        out["intervals"] = {k: _proportion_interval(out[k], n_test, alpha)
                            for k in ("native", "raw_transfer", "aligned_transfer", "b_own", "chance", "shuffled")}
    min_test = int(cfg.get("min_test", 30))
    out["min_test"] = min_test
    if n_test < min_test:
        out["warning"] = (f"only {n_test} test texts (< {min_test}): each accuracy moves in steps of "
                          f"{1 / max(n_test, 1):.2f} and the intervals overlap; use more labelled texts (n_texts)")
    return out


def _massive(ext: Extraction, ratio: float) -> dict:
    from .massive import massive_activation_dims

    out = {}
    for tag, S, mx_all, mx_first, layers in (("model_a", ext.sample_a, ext.max_abs_a, ext.max_abs_first_a,
                                              ext.layers_a),
                                             ("model_b", ext.sample_b, ext.max_abs_b, ext.max_abs_first_b,
                                              ext.layers_b)):
        per = []
        for li, layer in enumerate(layers):
            rep = massive_activation_dims(S[li], ratio=ratio)
            med = rep.median_abs
            all_ratio = mx_all[li] / med if med > 0 else torch.full_like(mx_all[li], float("inf"))
            flagged_all = torch.nonzero(all_ratio > ratio).flatten()
            rows = rep.rows
            first_frac = (float((ext.sample_pos[rows] == 0).double().mean())
                          if rows.numel() and ext.level == "token" else None)
            per.append({
                "layer": layer, "median_abs": med,
                "sample_dims": rep.dims.tolist(), "sample_max_abs": rep.max_abs.tolist(),
                "sample_ratio": rep.ratio.tolist(), "sample_row_fraction": rep.row_fraction.tolist(),
                "sample_rows_flagged": int(rows.numel()), "flagged_rows_at_position_0": first_frac,
                "all_tokens_dims": flagged_all.tolist(),
                "all_tokens_ratio": all_ratio[flagged_all].tolist(),
                "first_token_max_ratio": float((mx_first[li] / med).max()) if med > 0 else None,
                "max_ratio": float(all_ratio.max()),
            })
        out[tag] = per
    out["ratio_threshold"] = ratio
    out["note"] = ("sample_*: massive_activation_dims on the analysed sample rows (global median |x| of the layer); "
                   "all_tokens_*: running max |x| over every non-pad token, excluded tokens included, against the "
                   "sample median; first_token_max_ratio: the same for the first token of each text (attention sink)")
    return out


class _Ctx:
    """What every section needs: the extraction, the device, the diagonal layer pairs, timing."""

    def __init__(self, ext: Extraction, device):
        self.ext = ext
        self.dev = torch.device(device) if device is not None else torch.device("cpu")
        self.pairs = diagonal_pairs(len(ext.layers_a), len(ext.layers_b))
        self.n_s = ext.sample_text.numel()
        self.timings: dict = {}

    def a(self, i, r=None):
        return (self.ext.sample_a[i] if r is None else self.ext.sample_a[i, r]).to(self.dev)

    def b(self, j, r=None):
        return (self.ext.sample_b[j] if r is None else self.ext.sample_b[j, r]).to(self.dev)

    def layer_pair(self, i, j) -> dict:
        return {"layer_a": self.ext.layers_a[i], "layer_b": self.ext.layers_b[j]}

    def timed(self, name, fn, *args, **kw):
        t = time.perf_counter()
        out = fn(*args, **kw)
        self.timings[name] = round(time.perf_counter() - t, 3)
        return out


def _cka_section(c: _Ctx, arrays: dict) -> dict:
    cka = c.ext.cka
    biased = cka.compute(False)
    debiased = cka.compute(True) if cka.track_debiased and cka.n > 3 else None
    arrays["cka_biased"], arrays["cka_debiased"] = biased, debiased
    jk = getattr(cka, "jackknife", None)
    jackknife = None if jk is None else {
        name: {"low": _mat(v["low"]), "high": _mat(v["high"]), "centre": _mat(v["centre"]), "se": _mat(v["se"]),
               "n_blocks": v["n_blocks"], "alpha": v["alpha"], "method": v["method"]} for name, v in jk.items()}
    return {"biased": _mat(biased), "debiased": _mat(debiased) if debiased is not None else None,
            "jackknife": jackknife, "plan": cka.plan.describe(),
            "n_rows": cka.n, "rows": "every kept row (streamed float64 sufficient statistics)",
            "diagonal_biased": [_nan_to_none(float(biased[i, j])) for i, j in c.pairs],
            "diagonal_debiased": ([_nan_to_none(float(debiased[i, j])) for i, j in c.pairs]
                                  if debiased is not None else None)}


def _knn_section(c: _Ctx, knn_k, knn_metric: str, knn_max_rows: int, seed: int) -> dict:
    from .knn import dedupe_rows, knn_jaccard

    rng = np.random.default_rng(seed + 2)
    knn_rows = torch.from_numpy(np.sort(rng.choice(c.n_s, size=min(c.n_s, knn_max_rows), replace=False)))
    per = []
    for i, j in c.pairs:
        X, Y = c.a(i, knn_rows), c.b(j, knn_rows)
        keep, _ = dedupe_rows(X, Y)
        ks = [k for k in knn_k if 0 < k < keep.numel()]
        if not ks:
            per.append({**c.layer_pair(i, j), "skipped": f"{keep.numel()} distinct rows"})
            continue
        r = knn_jaccard(X, Y, ks, metric=knn_metric, dedupe=True)
        per.append({**c.layer_pair(i, j), "jaccard": {str(k): r.jaccard[k] for k in ks},
                    "mutual": {str(k): r.mutual[k] for k in ks},
                    "chance_jaccard": {str(k): r.chance_jaccard[k] for k in ks},
                    "chance_mutual": {str(k): r.chance_mutual[k] for k in ks},
                    "n_rows": r.n, "n_unique": r.n_unique})
    return {"k": list(knn_k), "metric": knn_metric, "n_rows": int(knn_rows.numel()),
            "rows": "seeded uniform subset of the sample; rows equal in both models collapsed (dedupe)",
            "per_layer": per}


def _procrustes_section(c: _Ctx, test_fraction: float, seed: int, arrays: dict, warns: list) -> dict:
    from .procrustes import orthogonal_procrustes, split_rows
    from .rotation_entropy import inverse_row_entropy, random_rotation_entropy_baseline

    groups = c.ext.sample_text
    fit, test = split_rows(c.n_s, test_fraction, seed=seed, groups=groups)
    per = []
    for i, j in c.pairs:
        X, Y = c.a(i), c.b(j)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f, te = fit.to(c.dev), test.to(c.dev)
            r = orthogonal_procrustes(X[f], Y[f], X[te], Y[te])
        d = min(r.O.shape)
        per.append({**c.layer_pair(i, j), "rvr_test": r.rvr_test, "cosine_test": r.cosine_test,
                    "row_cosine_test": r.row_cosine_test, "rvr_in_sample": r.rvr, "cosine_in_sample": r.cosine,
                    "row_cosine_in_sample": r.row_cosine,
                    "inverse_row_entropy": inverse_row_entropy(r.O) if r.O.shape[1] >= 2 else None,
                    "random_rotation_baseline": random_rotation_entropy_baseline(d) if d >= 2 else None,
                    "random_rotation_baseline_exact": random_rotation_entropy_baseline(d, exact=True) if d >= 2 else None,
                    "n_over_d": r.n_over_d, "rank": r.rank, "warnings": r.warnings})
        warns.extend(f"procrustes layer {c.ext.layers_a[i]}/{c.ext.layers_b[j]}: {w}" for w in r.warnings)
        if (i, j) == c.pairs[-1]:
            arrays["procrustes_O"] = r.O.cpu()
    return {"direction": "A -> B (X_a O ~ X_b)", "n_fit": int(fit.numel()), "n_test": int(test.numel()),
            "texts_fit": int(torch.unique(groups[fit]).numel()), "texts_test": int(torch.unique(groups[test]).numel()),
            "test_fraction_texts": test_fraction, "per_layer": per}


def _dimcorr_section(c: _Ctx, dimcorr_pairs: str, arrays: dict) -> dict:
    from .dimcorr import dimension_wise_correlation

    if c.ext.d_a != c.ext.d_b:
        return {"skipped": f"widths differ ({c.ext.d_a} vs {c.ext.d_b}): no shared coordinates"}
    diag = []
    for i, j in c.pairs:
        r = dimension_wise_correlation(c.a(i), c.b(j))
        diag.append({**c.layer_pair(i, j), "mean": _nan_to_none(r.mean), "n_valid": r.n_valid,
                     "n_excluded": r.n_excluded, "excluded": r.excluded.tolist()})
    entry = {"pairs": dimcorr_pairs, "n_rows": c.n_s, "diagonal": diag}
    if dimcorr_pairs == "all":
        mean, n_exc = dimcorr_matrix(c.ext.sample_a.to(c.dev), c.ext.sample_b.to(c.dev))
        mean, n_exc = mean.cpu(), n_exc.cpu()
        entry.update(mean=_mat(mean), n_excluded=n_exc.tolist())
        arrays["dimcorr"] = mean
    return entry


def _perm_entry(observed: float, null: torch.Tensor, alpha: float, frac: float | None = None) -> dict:
    """p-value, null summary and the calibrated score of one statistic."""
    from .calibration import calibrate_null

    cal = calibrate_null(observed, null, alpha)
    out = {"p_value": _nan_to_none(cal.p_value), "null_mean": _nan_to_none(float(null.mean())),
           "calibrated": cal.as_dict()}
    if frac is not None:
        out["exchangeable_fraction"] = frac
    return out


def _stats_cka(X, Y, g, n_boot: int, n_perm: int, alpha: float, seed: int) -> dict:
    from .cka import linear_cka
    from .intervals import cka_jackknife
    from .stats import cka_permutation_test

    cka = {name: {"estimate": _nan_to_none(linear_cka(X, Y, deb))} for name, deb in (("biased", False),
                                                                                       ("debiased", True))}
    if n_boot > 0:
        for name, iv in cka_jackknife(X, Y, g, alpha=alpha, seed=seed).items():
            cka[name].update(iv.as_dict())
    if n_perm > 0:
        for name, deb in (("biased", False), ("debiased", True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p = cka_permutation_test(X, Y, g, n_perm=n_perm, seed=seed, debiased=deb)
            cka[name].update(_perm_entry(p.observed, p.null, alpha, p.exchangeable_fraction),
                             null_q95=float(torch.quantile(p.null, 0.95)))
    return cka


def _stats_knn(X, Y, g, ks, metric: str, n_boot: int, n_perm: int, alpha: float, seed: int) -> tuple[dict, dict]:
    from .calibration import knn_overlap_null
    from .intervals import knn_interval

    jac, mut = {}, {}
    for k in ks:
        if n_boot > 0:
            try:
                iv = knn_interval(X, Y, g, k=k, metric=metric, alpha=alpha, seed=seed)
                jac[str(k)], mut[str(k)] = iv["jaccard"].as_dict(), iv["mutual"].as_dict()
            except ValueError as e:                     # too few texts or rows for quarters of the sample
                jac[str(k)] = {"interval_skipped": str(e)}
                mut[str(k)] = {"interval_skipped": str(e)}
    if ks and n_perm > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            nulls = knn_overlap_null(X, Y, g, ks, metric, n_perm=n_perm, seed=seed)
        for k, res in nulls.items():
            for out, key in ((jac, "jaccard"), (mut, "mutual")):
                obs, null = res[key]
                out.setdefault(str(k), {}).setdefault("estimate", obs)
                out[str(k)].update(_perm_entry(obs, null, alpha))
    return jac, mut


def _stats_generic(X, Y, g, n_perm: int, alpha: float, seed: int, test_fraction: float) -> dict:
    """Calibrated dimension-wise correlation and held-out Procrustes cosine (generic permutation null)."""
    from .dimcorr import dimension_wise_correlation
    from .procrustes import orthogonal_procrustes, split_rows
    from .stats import permutation_test

    out = {}
    if n_perm <= 0:
        return out
    fit, test = split_rows(X.shape[0], test_fraction, seed=seed, groups=g)

    def proc(A, B):
        return orthogonal_procrustes(A[fit], B[fit], A[test], B[test]).cosine_test

    fns = {"procrustes_cosine_test": proc}
    if X.shape[1] == Y.shape[1]:
        fns["dimcorr"] = lambda A, B: dimension_wise_correlation(A, B).mean
    for name, fn in fns.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = permutation_test(fn, X, Y, g, n_perm=n_perm, seed=seed)
        out[name] = {"estimate": _nan_to_none(p.observed), **_perm_entry(p.observed, p.null, alpha)}
    return out


def _stats_layer_search(c: _Ctx, srows, sgroups, stat_pairs, n_perm: int, alpha: float, seed: int,
                        progress: bool = False) -> dict:
    """Aggregation-aware calibration of the best (max) and mean CKA over every stats layer pair: the permutation
    null of the whole La x Lb matrix, in layer blocks whose Gram matrices fit ``memory_budget``."""
    from .calibration import _aggregate, calibrate_null
    from .cka_blocked import IndexedSource
    from .cka_gram import cka_null_blocked

    la = sorted({i for i, _ in stat_pairs})
    lb = sorted({j for _, j in stat_pairs})
    src_a = IndexedSource(c.ext.sample_a, la, srows)
    src_b = IndexedSource(c.ext.sample_b, lb, srows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            S, null, plan = cka_null_blocked(src_a, src_b, sgroups, n_perm=n_perm, seed=seed,
                                             memory_budget=getattr(c, "memory_budget", None), device=c.dev,
                                             progress=progress)
    except ValueError as e:                            # even one layer pair's Grams exceed the budget
        return {"skipped": str(e)}
    out = {"layers_a": [c.ext.layers_a[i] for i in la], "layers_b": [c.ext.layers_b[j] for j in lb],
           "plan": plan.describe(),
           "note": "one text permutation applied to every layer of B; the aggregate of the La x Lb CKA matrix "
                   "is calibrated, so picking the best layer pair does not inflate the score"}
    for agg in ("max", "mean"):
        out[agg] = calibrate_null(_aggregate(S, agg), [_aggregate(m, agg) for m in null], alpha).as_dict()
    return out


def _stats_section(c: _Ctx, knn_k, knn_metric, stats_layers, tokens_per_text, max_texts, n_boot, n_perm, alpha,
                   seed, test_fraction, progress) -> dict:
    from .knn import dedupe_rows

    ext = c.ext
    srows = _stats_rows(ext, tokens_per_text, max_texts, seed)
    sgroups = ext.sample_text[srows] if ext.level == "token" else None
    n_groups = int(torch.unique(ext.sample_text[srows]).numel()) if srows.numel() else 0
    stat_pairs = c.pairs if stats_layers == "all" else [c.pairs[-1]]
    if n_groups < 4 or (n_boot <= 0 and n_perm <= 0):
        return {"skipped": f"{n_groups} texts in the stats sample (need >= 4) or n_boot = n_perm = 0"}
    iterator = stat_pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(stat_pairs, desc="hrsa nulls", unit="layer")
    per = []
    for i, j in iterator:
        X, Y = c.a(i, srows).double(), c.b(j, srows).double()
        keep, _ = dedupe_rows(X, Y)
        keep = keep.cpu()
        g = sgroups
        if keep.numel() < X.shape[0]:                # only rows equal in both (e.g. layer 0 token ids)
            X, Y = X[keep.to(c.dev)], Y[keep.to(c.dev)]
            g = sgroups[keep] if sgroups is not None else None
        ks = [k for k in knn_k if 0 < k < X.shape[0] - 1]
        jac, mut = _stats_knn(X, Y, g, ks, knn_metric, n_boot, n_perm, alpha, seed)
        per.append({**c.layer_pair(i, j), "n_rows": int(X.shape[0]), "rows_collapsed": int(srows.numel() - X.shape[0]),
                    "cka": _stats_cka(X, Y, g, n_boot, n_perm, alpha, seed), "knn_jaccard": jac, "knn_mutual": mut,
                    **_stats_generic(X, Y, g, n_perm, alpha, seed, test_fraction)})
    out = {"n_boot": n_boot, "n_perm": n_perm, "alpha": alpha, "layers": stats_layers,
           "n_rows": int(srows.numel()), "n_texts": n_groups,
           "tokens_per_text": tokens_per_text if ext.level == "token" else None,
           "rows": ("the same random tokens_per_text tokens of each of up to stats_max_texts sample texts (token "
                    "level) or the sample texts (pooled level); estimates here are on these rows"),
           "intervals": ("no resampled copies, which inflate CKA and k-NN (n_boot > 0 switches them on). CKA: "
                         "delete-a-block jackknife over texts (up to 100 blocks); debiased: bias-corrected centre, "
                         "targets the population CKA; biased: centred on the estimate, targets the expected biased "
                         "CKA at this n, and its 'population' interval is the debiased one's. k-NN Jaccard and "
                         "mutual: split-sample variance (halves and quarters of the texts, rate estimated), "
                         "centred on the estimate, targets the expected overlap at this n. 'target' says which"),
           "permutation": "texts of model B re-paired with texts of model A; p = (1 + #{null >= obs}) / (K + 1)",
           "calibrated": ("score = max(0, (s - tau) / (1 - tau)), tau = the ceil((1 - alpha)(K + 1))-th order "
                          "statistic of {observed} and the K null values: 0 = not above unrelated representations"),
           "per_layer": per}
    if stats_layers == "all" and n_perm > 0 and len(stat_pairs) > 1:
        out["layer_search"] = _stats_layer_search(c, srows, sgroups, stat_pairs, n_perm, alpha, seed, progress)
    return out


def analyze(ext: Extraction, labels=None, *, knn_k=(5, 10, 50), knn_metric: str = "cosine",
            knn_max_rows: int = 4000, procrustes_test_fraction: float = 0.2, dimcorr_pairs: str = "all",
            stats_layers: str = "last", stats_tokens_per_text: int = 8, stats_max_texts: int = 256,
            n_boot: int = 200, n_perm: int = 200, alpha: float = 0.05, probe: dict | None = None,
            massive_ratio: float = 100.0, seed: int = 0, progress: bool = False,
            device=None, memory_budget=None) -> tuple[dict, dict]:
    """Compute every metric; returns ``(report, arrays)`` (arrays: tensors for the figures).

    ``device``: where the row-based metrics run (the sample stays on the CPU; one layer at a time is
    moved), e.g. ``cuda`` for exact k-NN on tens of thousands of rows. ``n_boot > 0`` switches the
    intervals on; ``n_perm`` permutations give the p-values and the calibrated scores.
    """
    for name, value, allowed in (("stats_layers", stats_layers, ("last", "all")),
                                 ("dimcorr_pairs", dimcorr_pairs, ("all", "diagonal")),
                                 ("knn_metric", knn_metric, ("cosine", "l2"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    t0 = time.perf_counter()
    c = _Ctx(ext, device)
    c.memory_budget = memory_budget              # the layer search's null runs in blocks that fit it
    probe = {"min_per_class": 10, "split": (0.8, 0.1, 0.1), "C": 1.0, "max_iter": 5000, **(probe or {})}
    report: dict = {"warnings": []}
    arrays: dict = {}
    report["cka"] = c.timed("cka", _cka_section, c, arrays)
    if c.n_s < 4:
        report["warnings"].append(f"only {c.n_s} sample rows: row-based metrics skipped")
        report["timing_s"] = c.timings
        return report, arrays
    report["knn"] = c.timed("knn", _knn_section, c, knn_k, knn_metric, knn_max_rows, seed)
    report["procrustes"] = c.timed("procrustes", _procrustes_section, c, procrustes_test_fraction, seed, arrays,
                                   report["warnings"])
    report["dimcorr"] = c.timed("dimcorr", _dimcorr_section, c, dimcorr_pairs, arrays)
    report["stats"] = c.timed("stats", _stats_section, c, knn_k, knn_metric, stats_layers, stats_tokens_per_text,
                              stats_max_texts, n_boot, n_perm, alpha, seed, procrustes_test_fraction, progress)
    try:
        report["probe"] = c.timed("probe", _probe, ext, labels, probe, seed, alpha)
    except ValueError as e:                      # e.g. a class too small for the split
        report["probe"] = {"skipped": str(e)}
    report["massive_activations"] = c.timed("massive", _massive, ext, massive_ratio)
    if isinstance(report["probe"], dict) and report["probe"].get("warning"):
        report["warnings"].append(f"probe: {report['probe']['warning']}")
    report["timing_s"] = c.timings
    report["analysis_seconds"] = round(time.perf_counter() - t0, 3)
    return report, arrays
