"""PNG figures of an HRSA report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reasoning_embed.utils.io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _heatmap(plt, M, layers_a, layers_b, title, path, vmin=0.0, vmax=1.0, cmap="viridis"):
    M = np.asarray(M, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * len(layers_b) + 2, 1.2 + 0.35 * len(layers_a) + 1.5))
    im = ax.imshow(M, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
    ax.set_xticks(range(len(layers_b)), [str(v) for v in layers_b])
    ax.set_yticks(range(len(layers_a)), [str(v) for v in layers_a])
    ax.set_xlabel("model B layer")
    ax.set_ylabel("model A layer")
    if M.size <= 100:
        for (i, j), v in np.ndenumerate(M):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _nan(v):
    return np.nan if v is None else v


def write_figures(report: dict, arrays: dict, out_dir: str | Path) -> list[str]:
    """Write the figures next to hrsa.json; returns their file names."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    la, lb = report["layers"]["model_a"], report["layers"]["model_b"]
    names = f"{report['models']['model_a']['name']} vs {report['models']['model_b']['name']}"
    files = []
    cka = report["cka"]
    M = np.array([[_nan(v) for v in row] for row in cka["biased"]])
    files.append(_heatmap(plt, M, la, lb, f"linear CKA (biased), {names}", out / "cka_biased.png"))
    if cka.get("debiased") is not None:
        M = np.array([[_nan(v) for v in row] for row in cka["debiased"]])
        files.append(_heatmap(plt, M, la, lb, f"linear CKA (debiased), {names}", out / "cka_debiased.png",
                              vmin=min(0.0, np.nanmin(M)) if np.isfinite(M).any() else 0.0))
    dc = report.get("dimcorr", {})
    if dc.get("mean") is not None:
        M = np.array([[_nan(v) for v in row] for row in dc["mean"]])
        files.append(_heatmap(plt, M, la, lb, f"dimension-wise correlation, {names}", out / "dimcorr.png",
                              vmin=-1.0, vmax=1.0, cmap="RdBu_r"))

    knn = report.get("knn", {})
    per = [p for p in knn.get("per_layer", []) if "jaccard" in p]
    if per:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [p["layer_a"] for p in per]
        for i, k in enumerate(per[0]["jaccard"]):
            color = f"C{i}"
            ax.plot(x, [p["jaccard"].get(k, np.nan) for p in per], "o-", color=color, label=f"Jaccard k={k}")
            ax.plot(x, [p["chance_jaccard"].get(k, np.nan) for p in per], ":", color=color, label=f"chance k={k}")
        for entry in report.get("stats", {}).get("per_layer", []):
            for i, k in enumerate(entry.get("knn_jaccard", {})):
                s = entry["knn_jaccard"][k]
                if s.get("low") is not None:
                    ax.errorbar([entry["layer_a"] + 0.05 * (i - 1)], [s["estimate"]],
                                yerr=[[max(0.0, s["estimate"] - s["low"])], [max(0.0, s["high"] - s["estimate"])]],
                                fmt="x", color=f"C{i}", alpha=0.6, capsize=2)
        ax.set_xlabel("layer (model A; B matched by depth)")
        ax.set_ylabel("k-NN Jaccard overlap")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"k-NN overlap, {names}\n(x: stats-sample estimate with its {1 - report.get('stats', {}).get('alpha', 0.05):.0%}"
                     " interval)", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        save_figure(fig, out / "knn_overlap.png")
        plt.close(fig)
        files.append(out / "knn_overlap.png")

    pro = report.get("procrustes", {}).get("per_layer", [])
    if pro:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        x = [p["layer_a"] for p in pro]
        ax = axes[0]
        ax.plot(x, [_nan(p["cosine_test"]) for p in pro], "o-", label="cosine, held-out texts")
        ax.plot(x, [_nan(p["cosine_in_sample"]) for p in pro], "o--", label="cosine, in-sample (paper)")
        ax.plot(x, [_nan(p["rvr_test"]) for p in pro], "s-", label="residual variance ratio, held-out")
        ax.set_xlabel("layer")
        ax.set_title("orthogonal Procrustes A -> B", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.plot(x, [_nan(p["inverse_row_entropy"]) for p in pro], "o-", label="inverse row entropy of O")
        ax.plot(x, [_nan(p["random_rotation_baseline"]) for p in pro], ":", label="random rotation baseline")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_title("is the coordinate basis kept?", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / "procrustes.png")
        plt.close(fig)
        files.append(out / "procrustes.png")

    O = arrays.get("procrustes_O")
    if O is not None:
        A = np.abs(O.cpu().numpy())
        fig, ax = plt.subplots(figsize=(5.5, 5))
        im = ax.imshow(A, cmap="magma", vmin=0, vmax=max(1e-12, float(A.max())), interpolation="nearest")
        ax.set_xlabel("model B dimension")
        ax.set_ylabel("model A dimension")
        ax.set_title(f"|O|, Procrustes alignment at layer {pro[-1]['layer_a']}/{pro[-1]['layer_b']}\n"
                     f"inverse row entropy {pro[-1]['inverse_row_entropy']:.3f} (random "
                     f"{pro[-1]['random_rotation_baseline']:.3f}, identity 1)", fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        save_figure(fig, out / "alignment_matrix.png")
        plt.close(fig)
        files.append(out / "alignment_matrix.png")

    cal = _calibrated_figure(plt, report, names, out)
    if cal is not None:
        files.append(cal)

    probe = report.get("probe", {})
    if "native" in probe:
        keys = ["native", "raw_transfer", "aligned_transfer", "b_own", "chance", "shuffled"]
        vals = [_nan(probe[k]) for k in keys]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        iv = probe.get("intervals") or {}
        err = None
        if iv:
            lo = [max(0.0, v - (iv.get(k) or [v, v])[0]) if np.isfinite(v) else 0.0 for k, v in zip(keys, vals)]
            hi = [max(0.0, (iv.get(k) or [v, v])[1] - v) if np.isfinite(v) else 0.0 for k, v in zip(keys, vals)]
            err = [lo, hi]
        ax.bar(range(len(keys)), vals, color=["C0", "C3", "C2", "C1", "0.6", "0.8"], yerr=err, capsize=3)
        ax.set_xticks(range(len(keys)), ["A native", "A->B raw", "A->B aligned", "B own", "chance", "shuffled"],
                      fontsize=8)
        for i, v in enumerate(vals):
            if np.isfinite(v):
                ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(probe["metric"])
        warn = "\nWARNING: too few test texts to compare these bars" if probe.get("warning") else ""
        ax.set_title(f"cross-model linear probe, layer {probe['layer_a']}/{probe['layer_b']} "
                     f"({probe['n_test']} test texts, 95% Wilson intervals){warn}", fontsize=9,
                     color="C3" if warn else "black")
        fig.tight_layout()
        save_figure(fig, out / "probe_transfer.png")
        plt.close(fig)
        files.append(out / "probe_transfer.png")
    return [Path(f).name for f in files]


def _calibrated_rows(entry: dict) -> list[tuple[str, float, float, float | None]]:
    """(label, raw, calibrated, tau) of every calibrated score of one stats layer."""
    rows = []
    for name in ("biased", "debiased"):
        e = entry.get("cka", {}).get(name, {})
        if e.get("calibrated"):
            rows.append((f"CKA {name}", e["estimate"], e["calibrated"]["score"], e["calibrated"]["tau"]))
    for key, label in (("knn_jaccard", "k-NN Jaccard"), ("knn_mutual", "k-NN mutual")):
        for k, e in entry.get(key, {}).items():
            if e.get("calibrated"):
                rows.append((f"{label} k={k}", e["estimate"], e["calibrated"]["score"], e["calibrated"]["tau"]))
    for key, label in (("procrustes_cosine_test", "Procrustes cos (held-out)"), ("dimcorr", "dim. correlation")):
        e = entry.get(key) or {}
        if e.get("calibrated"):
            rows.append((label, e["estimate"], e["calibrated"]["score"], e["calibrated"]["tau"]))
    return rows


def _calibrated_figure(plt, report: dict, names: str, out: Path):
    """Raw against null-calibrated scores at the last stats layer (tau: the permutation-null threshold)."""
    per = report.get("stats", {}).get("per_layer") or []
    rows = _calibrated_rows(per[-1]) if per else []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [_nan(r[1]) for r in rows], 0.4, label="raw", color="0.6")
    ax.bar(x + 0.2, [_nan(r[2]) for r in rows], 0.4, label="calibrated", color="C0")
    ax.plot(x - 0.2, [_nan(r[3]) for r in rows], "_", color="C3", markersize=18, mew=2,
            label=f"null threshold tau (alpha {report['stats'].get('alpha', 0.05)})")
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(min(0.0, np.nanmin([_nan(r[1]) for r in rows])) - 0.02, 1.05)
    ax.axhline(0, color="black", lw=0.5)
    layer = f"{per[-1]['layer_a']}/{per[-1]['layer_b']}"
    ax.set_title(f"raw vs null-calibrated similarity, {names}, layer {layer}\n"
                 "calibrated = max(0, (s - tau) / (1 - tau)): 0 = not above unrelated representations", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "calibrated.png")
    plt.close(fig)
    return out / "calibrated.png"
