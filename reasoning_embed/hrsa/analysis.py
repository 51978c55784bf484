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
  other in the permutation null; bootstrap resamples texts, permutations re-pair texts;
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


def _boot_entry(b) -> dict:
    ok = b.samples[torch.isfinite(b.samples)]
    mean = float(ok.mean()) if ok.numel() else float("nan")
    est = b.estimate
    return {"estimate": _nan_to_none(est), "low": _nan_to_none(b.low), "high": _nan_to_none(b.high),
            "boot_bias": _nan_to_none(mean - est), "basic_low": _nan_to_none(2 * est - b.high),
            "basic_high": _nan_to_none(2 * est - b.low)}


def _probe(ext: Extraction, labels, cfg: dict, seed: int) -> dict:
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
    return {"metric": res.metric, "native": res.native, "raw_transfer": _nan_to_none(res.raw_transfer),
            "aligned_transfer": res.aligned_transfer, "b_own": res.b_own, "chance": res.chance,
            "shuffled": res.shuffled, "layer_a": ext.probe_layer[0], "layer_b": ext.probe_layer[1],
            "pooling": ext.pooling, "n_train": int(tr.numel()), "n_val_unused": int(va.numel()),
            "n_test": int(te.numel()), "classes": {c: int(n) for c, n in zip(vals, counts) if c in classes},
            "classes_dropped": int(len(vals) - len(classes)),
            "note": "probe on A's pooled features; raw = A's probe on B unchanged, aligned = after Procrustes "
                    "B->A fitted on train texts, b_own = B's own probe; the 10% validation split is unused "
                    "(no tuning)"}


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


def analyze(ext: Extraction, labels=None, *, knn_k=(5, 10, 50), knn_metric: str = "cosine",
            knn_max_rows: int = 4000, procrustes_test_fraction: float = 0.2, dimcorr_pairs: str = "all",
            stats_layers: str = "last", stats_tokens_per_text: int = 8, stats_max_texts: int = 256,
            n_boot: int = 200, n_perm: int = 200, alpha: float = 0.05, probe: dict | None = None,
            massive_ratio: float = 100.0, seed: int = 0, progress: bool = False,
            device=None) -> tuple[dict, dict]:
    """Compute every metric; returns ``(report, arrays)`` (arrays: tensors for the figures).

    ``device``: where the row-based metrics run (the sample stays on the CPU; one layer at a time is
    moved), e.g. ``cuda`` for exact k-NN on tens of thousands of rows.
    """
    from .cka import linear_cka
    from .dimcorr import dimension_wise_correlation
    from .fast_stats import cka_bootstrap_ci, knn_bootstrap_ci, knn_permutation_test
    from .knn import dedupe_rows, knn_jaccard
    from .procrustes import orthogonal_procrustes, split_rows
    from .rotation_entropy import inverse_row_entropy, random_rotation_entropy_baseline
    from .stats import cka_permutation_test

    for name, value, allowed in (("stats_layers", stats_layers, ("last", "all")),
                                 ("dimcorr_pairs", dimcorr_pairs, ("all", "diagonal")),
                                 ("knn_metric", knn_metric, ("cosine", "l2"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    t0 = time.perf_counter()
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def rows_a(i, r=None):
        x = ext.sample_a[i] if r is None else ext.sample_a[i, r]
        return x.to(dev)

    def rows_b(j, r=None):
        y = ext.sample_b[j] if r is None else ext.sample_b[j, r]
        return y.to(dev)

    probe = {"min_per_class": 10, "split": (0.8, 0.1, 0.1), "C": 1.0, "max_iter": 5000, **(probe or {})}
    La, Lb = len(ext.layers_a), len(ext.layers_b)
    pairs = diagonal_pairs(La, Lb)
    n_s = ext.sample_text.numel()
    report: dict = {"warnings": []}
    arrays: dict = {}
    timings: dict = {}

    def tick(name, t):
        timings[name] = round(time.perf_counter() - t, 3)

    def layer_pair(i, j):
        return {"layer_a": ext.layers_a[i], "layer_b": ext.layers_b[j]}

    # ---- geometry: CKA over every kept row
    t = time.perf_counter()
    biased = ext.cka.compute(False)
    debiased = ext.cka.compute(True) if ext.cka.track_debiased and ext.cka.n > 3 else None
    report["cka"] = {"biased": _mat(biased), "debiased": _mat(debiased) if debiased is not None else None,
                     "n_rows": ext.cka.n, "rows": "every kept row (streamed float64 sufficient statistics)",
                     "diagonal_biased": [_nan_to_none(float(biased[i, j])) for i, j in pairs],
                     "diagonal_debiased": ([_nan_to_none(float(debiased[i, j])) for i, j in pairs]
                                           if debiased is not None else None)}
    arrays["cka_biased"], arrays["cka_debiased"] = biased, debiased
    tick("cka", t)
    if n_s < 4:
        report["warnings"].append(f"only {n_s} sample rows: row-based metrics skipped")
        report["timing_s"] = timings
        return report, arrays

    # ---- geometry: k-NN on a uniform subset of the sample
    t = time.perf_counter()
    rng = np.random.default_rng(seed + 2)
    knn_rows = torch.from_numpy(np.sort(rng.choice(n_s, size=min(n_s, knn_max_rows), replace=False)))
    per = []
    for i, j in pairs:
        X, Y = rows_a(i, knn_rows), rows_b(j, knn_rows)
        keep, _ = dedupe_rows(X, Y)
        ks = [k for k in knn_k if 0 < k < keep.numel()]
        if not ks:
            per.append({**layer_pair(i, j), "skipped": f"{keep.numel()} distinct rows"})
            continue
        r = knn_jaccard(X, Y, ks, metric=knn_metric, dedupe=True)
        per.append({**layer_pair(i, j), "jaccard": {str(k): r.jaccard[k] for k in ks},
                    "mutual": {str(k): r.mutual[k] for k in ks},
                    "chance_jaccard": {str(k): r.chance_jaccard[k] for k in ks},
                    "chance_mutual": {str(k): r.chance_mutual[k] for k in ks},
                    "n_rows": r.n, "n_unique": r.n_unique})
    report["knn"] = {"k": list(knn_k), "metric": knn_metric, "n_rows": int(knn_rows.numel()),
                     "rows": "seeded uniform subset of the sample; rows equal in both models collapsed (dedupe)",
                     "per_layer": per}
    tick("knn", t)

    # ---- representation: Procrustes on diagonal pairs, fit / held-out split by text
    t = time.perf_counter()
    groups = ext.sample_text
    fit, test = split_rows(n_s, procrustes_test_fraction, seed=seed, groups=groups)
    per = []
    for i, j in pairs:
        X, Y = rows_a(i), rows_b(j)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f, te = fit.to(dev), test.to(dev)
            r = orthogonal_procrustes(X[f], Y[f], X[te], Y[te])
        d = min(r.O.shape)
        entry = {**layer_pair(i, j), "rvr_test": r.rvr_test, "cosine_test": r.cosine_test,
                 "row_cosine_test": r.row_cosine_test, "rvr_in_sample": r.rvr, "cosine_in_sample": r.cosine,
                 "row_cosine_in_sample": r.row_cosine,
                 "inverse_row_entropy": inverse_row_entropy(r.O) if r.O.shape[1] >= 2 else None,
                 "random_rotation_baseline": random_rotation_entropy_baseline(d) if d >= 2 else None,
                 "random_rotation_baseline_exact": random_rotation_entropy_baseline(d, exact=True) if d >= 2 else None,
                 "n_over_d": r.n_over_d, "rank": r.rank, "warnings": r.warnings}
        per.append(entry)
        report["warnings"].extend(f"procrustes layer {ext.layers_a[i]}/{ext.layers_b[j]}: {w}" for w in r.warnings)
        if (i, j) == pairs[-1]:
            arrays["procrustes_O"] = r.O.cpu()
    report["procrustes"] = {"direction": "A -> B (X_a O ~ X_b)", "n_fit": int(fit.numel()), "n_test": int(test.numel()),
                            "texts_fit": int(torch.unique(groups[fit]).numel()),
                            "texts_test": int(torch.unique(groups[test]).numel()),
                            "test_fraction_texts": procrustes_test_fraction, "per_layer": per}
    tick("procrustes", t)

    # ---- representation: dimension-wise correlation
    t = time.perf_counter()
    if ext.d_a != ext.d_b:
        report["dimcorr"] = {"skipped": f"widths differ ({ext.d_a} vs {ext.d_b}): no shared coordinates"}
    else:
        diag = []
        for i, j in pairs:
            r = dimension_wise_correlation(rows_a(i), rows_b(j))
            diag.append({**layer_pair(i, j), "mean": _nan_to_none(r.mean), "n_valid": r.n_valid,
                         "n_excluded": r.n_excluded, "excluded": r.excluded.tolist()})
        entry = {"pairs": dimcorr_pairs, "n_rows": n_s, "diagonal": diag}
        if dimcorr_pairs == "all":
            mean, n_exc = dimcorr_matrix(ext.sample_a.to(dev), ext.sample_b.to(dev))
            mean, n_exc = mean.cpu(), n_exc.cpu()
            entry.update(mean=_mat(mean), n_excluded=n_exc.tolist())
            arrays["dimcorr"] = mean
        report["dimcorr"] = entry
    tick("dimcorr", t)

    # ---- statistics: bootstrap (texts resampled) and permutation (texts re-paired)
    t = time.perf_counter()
    srows = _stats_rows(ext, stats_tokens_per_text, stats_max_texts, seed)
    sgroups = ext.sample_text[srows] if ext.level == "token" else None
    n_groups = int(torch.unique(ext.sample_text[srows]).numel()) if srows.numel() else 0
    stat_pairs = pairs if stats_layers == "all" else [pairs[-1]]
    per = []
    if n_groups < 4 or (n_boot <= 0 and n_perm <= 0):
        report["stats"] = {"skipped": f"{n_groups} texts in the stats sample (need >= 4) or n_boot = n_perm = 0"}
    else:
        iterator = stat_pairs
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(stat_pairs, desc="hrsa nulls", unit="layer")
        for i, j in iterator:
            X, Y = rows_a(i, srows).double(), rows_b(j, srows).double()
            keep, _ = dedupe_rows(X, Y)
            keep = keep.cpu()
            g = sgroups
            if keep.numel() < X.shape[0]:                # only rows equal in both (e.g. layer 0 token ids)
                X, Y = X[keep.to(dev)], Y[keep.to(dev)]
                g = sgroups[keep] if sgroups is not None else None
            entry = {**layer_pair(i, j), "n_rows": int(X.shape[0]), "rows_collapsed": int(srows.numel() - X.shape[0])}
            cka = {}
            if n_boot > 0:
                bs = cka_bootstrap_ci(X, Y, g, n_boot=n_boot, alpha=alpha, seed=seed)
                for name, b in bs.items():
                    cka[name] = _boot_entry(b)
            if n_perm > 0:
                for name, deb in (("biased", False), ("debiased", True)):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        p = cka_permutation_test(X, Y, g, n_perm=n_perm, seed=seed, debiased=deb)
                    cka.setdefault(name, {"estimate": _nan_to_none(linear_cka(X, Y, deb))})
                    cka[name].update(p_value=p.p_value, null_mean=float(p.null.mean()),
                                     null_q95=float(torch.quantile(p.null, 0.95)),
                                     exchangeable_fraction=p.exchangeable_fraction)
            entry["cka"] = cka
            ks = [k for k in knn_k if 0 < k < X.shape[0] - 1]
            knn = {}
            if ks and n_boot > 0:
                for k, b in knn_bootstrap_ci(X, Y, g, ks, knn_metric, n_boot=n_boot, alpha=alpha, seed=seed).items():
                    knn[str(k)] = _boot_entry(b)
            if ks and n_perm > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = knn_permutation_test(X, Y, g, ks, knn_metric, n_perm=n_perm, seed=seed)
                for k, p in res.items():
                    knn.setdefault(str(k), {"estimate": p.observed})
                    knn[str(k)].update(p_value=p.p_value, null_mean=float(p.null.mean()),
                                       exchangeable_fraction=p.exchangeable_fraction)
            entry["knn_jaccard"] = knn
            per.append(entry)
            for metric, vals in (("CKA", cka), ("k-NN Jaccard", knn)):
                off = [name for name, v in vals.items() if v.get("low") is not None
                       and not v["low"] <= v["estimate"] <= v["high"]]
                if off:
                    report["warnings"].append(
                        f"stats layer {ext.layers_a[i]}/{ext.layers_b[j]}: {metric} {off} estimate outside its "
                        "percentile bootstrap interval (resampling shifts it: see boot_bias and the basic interval)")
        report["stats"] = {
            "n_boot": n_boot, "n_perm": n_perm, "alpha": alpha, "layers": stats_layers,
            "n_rows": int(srows.numel()), "n_texts": n_groups,
            "tokens_per_text": stats_tokens_per_text if ext.level == "token" else None,
            "rows": ("the same random tokens_per_text tokens of each of up to stats_max_texts sample texts (token "
                     "level) or the sample texts (pooled level); estimates here are on these rows"),
            "bootstrap": ("texts resampled with replacement (copies collapsed for k-NN); low/high: percentile interval; "
                          "boot_bias = mean(bootstrap) - estimate: resampled data repeat texts, which moves CKA (fewer "
                          "distinct rows) and k-NN (a smaller neighbour pool); basic_low/basic_high = 2 * estimate - "
                          "the percentile bounds corrects that shift to first order"),
            "permutation": "texts of model B re-paired with texts of model A; p = (1 + #{null >= obs}) / (K + 1)",
            "per_layer": per}
    tick("stats", t)

    # ---- function: probe transfer at the last layer
    t = time.perf_counter()
    try:
        report["probe"] = _probe(ext, labels, probe, seed)
    except ValueError as e:                      # e.g. a class too small for the split
        report["probe"] = {"skipped": str(e)}
    tick("probe", t)

    t = time.perf_counter()
    report["massive_activations"] = _massive(ext, massive_ratio)
    tick("massive", t)
    report["timing_s"] = timings
    report["analysis_seconds"] = round(time.perf_counter() - t0, 3)
    return report, arrays
