"""Cross-run realignment (library behind ``python -m reasoning_embed.realign`` and the report).

Reads the per-step probe embeddings the HRSA callback saved (``<run>/hrsa/features/step_<N>.safetensors``)
and, at every step both runs have, compares run A with run B: linear CKA (biased and debiased), k-NN
Jaccard, Procrustes cosine on held-out probe rows (fit on half the texts, scored on the other half) and
dimension-wise correlation, beside each run's similarity to its own step 0. CKA and k-NN carry 95% bands
(the HRSA intervals over probe texts, :mod:`reasoning_embed.hrsa.intervals`: no bootstrap copies)
and their null-calibrated values (:mod:`reasoning_embed.hrsa.calibration`, probe texts re-paired).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["pair_sweep_runs", "plot_realignment", "plot_sweep_realignment", "realign_pair", "run_steps",
           "sweep_realignment"]

log = logging.getLogger("reasoning_embed.realign")
_STEP = re.compile(r"step_(\d+)\.safetensors$")


def run_steps(run_dir: Path) -> dict[int, Path]:
    feats = Path(run_dir) / "hrsa" / "features"
    return {int(m.group(1)): p for p in feats.glob("step_*.safetensors") if (m := _STEP.search(p.name))}


def _metrics(X, Y, k: int, seed: int) -> dict[str, float]:
    from reasoning_embed.hrsa import dimension_wise_correlation, knn_jaccard, linear_cka, orthogonal_procrustes, split_rows

    fit, test = split_rows(X.shape[0], 0.5, seed)
    proc = orthogonal_procrustes(X[fit], Y[fit], X[test], Y[test])
    return {
        "cka": linear_cka(X, Y),
        "cka_debiased": linear_cka(X, Y, debiased=True),
        "knn": knn_jaccard(X, Y, k=(k,)).jaccard[k],
        "procrustes_cos_heldout": proc.cosine_test,
        "procrustes_cos_insample": proc.cosine,
        "dimcorr": dimension_wise_correlation(X, Y).mean,
    }


def _bands_and_calibration(X, Y, k: int, bands: bool, n_perm: int, alpha: float, seed: int) -> dict:
    """Bands of CKA and k-NN (the HRSA intervals, rows = probe texts), and their calibrated values.

    ``cka_band``: the expected biased CKA at this probe size (contains the plotted estimate);
    ``cka_debiased_band``: the population CKA; ``knn_band``: the expected k-NN Jaccard at this probe size
    (none when the probe set is too small for quarters of it to search their own k neighbours)."""
    from reasoning_embed.hrsa.calibration import calibrate_null
    from reasoning_embed.hrsa.fast_stats import knn_permutation_test
    from reasoning_embed.hrsa.intervals import cka_jackknife, knn_interval
    from reasoning_embed.hrsa.stats import cka_permutation_test

    out: dict = {}
    if bands:
        cka = cka_jackknife(X, Y, alpha=alpha, max_blocks=50, seed=seed)
        out["cka_band"] = [cka["biased"].low, cka["biased"].high]
        out["cka_debiased_band"] = [cka["debiased"].low, cka["debiased"].high]
        try:
            knn = knn_interval(X, Y, k=k, alpha=alpha, seed=seed)["jaccard"]
            out["knn_band"] = [knn.low, knn.high]
        except ValueError as e:
            log.warning("no k-NN band: %s", e)
    if n_perm > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pc = cka_permutation_test(X, Y, n_perm=n_perm, seed=seed)
            pk = knn_permutation_test(X, Y, k=(k,), n_perm=n_perm, seed=seed)[k]
        out["cka_calibrated"] = calibrate_null(pc.observed, pc.null, alpha).as_dict()
        out["knn_calibrated"] = calibrate_null(pk.observed, pk.null, alpha).as_dict()
    return out


def _load_pair(steps_a, steps_b, step):
    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.training.hrsa_callback import load_features

    A = load_features(steps_a[step])["embeddings"]
    B = load_features(steps_b[step])["embeddings"]
    if A.shape[0] != B.shape[0]:
        raise ReasoningEmbedError(f"step {step}: runs have {A.shape[0]} and {B.shape[0]} probe rows; the two "
                                  f"runs must use the same probe set (callbacks.hrsa.probe_file / n_probe)")
    return A, B


_CACHE_FORMAT = 2                       # 2: k-NN band from hrsa.intervals.knn_interval, cka_debiased_band


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cached_step(cache_dir, digests: list[str], settings: dict, compute):
    """(one step's row, whether it was reused): from the feature cache's ``realign/`` entries when the same step
    files (``digests``: their contents' :func:`_file_digest`) were compared with the same settings before; else
    computed and recorded (atomically)."""
    import hashlib
    import json

    if cache_dir is None:
        return compute(), False
    fields = {"format": _CACHE_FORMAT, "files": digests, "settings": settings}
    key = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=12).hexdigest()
    path = Path(cache_dir) / "realign" / f"{key}.json"
    if path.is_file():
        try:
            entry = json.loads(path.read_text())
            if entry.get("key") == fields:
                return entry["row"], True
        except (json.JSONDecodeError, KeyError):
            pass
        log.warning("realignment cache entry %s does not match its key: recomputed", path)
    from reasoning_embed.utils.io import atomic_write_json

    row = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": fields, "row": row})
    return row, False


def realign_pair(run_a: Path, run_b: Path, out: Path, k: int = 10, n_perm: int = 100, seed: int = 0,
                 plot: bool = True, bands: bool = True, alpha: float = 0.05, cache_dir=None) -> dict:
    """The realignment series of two runs; writes ``realignment.json`` (and ``realignment.png``).

    ``cache_dir`` (the HRSA feature cache's root): every step's comparison is recorded under ``realign/`` keyed
    by the content of the four step files it reads (A, B and their first steps) and the settings, so a second run
    (or the report after ``realign``) reuses it, and a changed file or setting never does.
    """
    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.hrsa import knn_jaccard, linear_cka
    from reasoning_embed.training.hrsa_callback import load_features
    from reasoning_embed.utils.io import atomic_write_json

    steps_a, steps_b = run_steps(run_a), run_steps(run_b)
    if not steps_a or not steps_b:
        missing = run_a if not steps_a else run_b
        raise ReasoningEmbedError(f"{missing}/hrsa/features holds no step_<N>.safetensors: train it with the HRSA "
                                  f"callback on (callbacks.hrsa.enabled=true, save_features=true)")
    common = sorted(set(steps_a) & set(steps_b))
    init_a = load_features(steps_a[min(steps_a)])["embeddings"]
    init_b = load_features(steps_b[min(steps_b)])["embeddings"]
    kk = min(k, init_a.shape[0] - 1)
    knn_fn = lambda X, Y: knn_jaccard(X, Y, k=(kk,)).jaccard[kk]  # noqa: E731
    series, reused = [], 0

    def compute(step):
        A, B = _load_pair(steps_a, steps_b, step)
        row = {"step": step, "a_vs_b": {**_metrics(A, B, kk, seed),
                                         **_bands_and_calibration(A, B, kk, bands, n_perm, alpha, seed)}}
        row["a_vs_init"] = {"cka": linear_cka(A, init_a), "knn": knn_fn(A, init_a)}
        row["b_vs_init"] = {"cka": linear_cka(B, init_b), "knn": knn_fn(B, init_b)}
        return row

    settings = {"k": kk, "n_perm": n_perm, "seed": seed, "bands": bool(bands), "alpha": alpha}
    # the two first-step files are part of every step's key: hashed once, not once per step
    init_digests = [_file_digest(steps_a[min(steps_a)]), _file_digest(steps_b[min(steps_b)])] if cache_dir else []
    for step in common:
        digests = [_file_digest(steps_a[step]), _file_digest(steps_b[step]), *init_digests] if cache_dir else []
        row, hit = _cached_step(cache_dir, digests, settings, lambda: compute(step))
        reused += hit
        series.append(row)
    if cache_dir is not None:
        log.info("realignment %s vs %s: %d of %d steps reused from the cache %s", Path(run_a).name,
                 Path(run_b).name, reused, len(common), Path(cache_dir) / "realign")
    result = {"run_a": str(run_a), "run_b": str(run_b), "k": kk, "n_perm": n_perm, "alpha": alpha,
              "bands": ("95% intervals over probe texts (hrsa.intervals): cka_band the expected biased CKA at "
                        "this probe size (jackknife), cka_debiased_band the population CKA, knn_band the expected "
                        "k-NN Jaccard at this probe size (split-sample variance)") if bands else None,
              "calibrated": "max(0, (s - tau) / (1 - tau)), tau: permutation-null threshold at alpha (texts re-paired)",
              "steps": common, "series": series, "steps_reused_from_cache": reused}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "realignment.json", result)
    if plot:
        plot_realignment(result, out / "realignment.png")
    return result


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")


def _similarity_panel(ax, result: dict, key: str, title: str) -> None:
    series = result["series"]
    steps = [r["step"] for r in series]
    ax.plot(steps, [r["a_vs_b"][key] for r in series], "o-", label="A vs B (same step)")
    if series and f"{key}_band" in series[0]["a_vs_b"]:
        ax.fill_between(steps, [r["a_vs_b"][f"{key}_band"][0] for r in series],
                        [r["a_vs_b"][f"{key}_band"][1] for r in series], alpha=0.25,
                        label="A vs B 95% band (texts resampled without copies)")
    if series and f"{key}_calibrated" in series[0]["a_vs_b"]:
        ax.plot(steps, [r["a_vs_b"][f"{key}_calibrated"]["score"] for r in series], "d-.",
                label="A vs B calibrated")
    ax.plot(steps, [r["a_vs_init"][key] for r in series], "s--", label="A vs A@0")
    ax.plot(steps, [r["b_vs_init"][key] for r in series], "^--", label="B vs B@0")
    ax.set_title(title)
    ax.set_ylim(-0.05, 1.05)                 # every similarity panel on the same [0, 1] scale
    _integer_steps(ax)
    ax.legend(fontsize=7)


def plot_realignment(result: dict, path: Path) -> None:
    import matplotlib

    from reasoning_embed.utils.io import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    steps = [r["step"] for r in series]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    _similarity_panel(axes[0], result, "cka", "linear CKA")
    _similarity_panel(axes[1], result, "knn", f"k-NN Jaccard (k={result['k']})")
    axes[2].plot(steps, [r["a_vs_b"]["procrustes_cos_heldout"] for r in series], "o-", label="held-out")
    axes[2].plot(steps, [r["a_vs_b"]["procrustes_cos_insample"] for r in series], "x:", label="in-sample")
    axes[2].set_title("Procrustes cosine A->B")
    axes[2].legend(fontsize=7)
    axes[3].plot(steps, [r["a_vs_b"]["dimcorr"] for r in series], "o-")
    axes[3].set_title("dimension-wise correlation A vs B")
    for ax in axes[2:]:
        ax.set_ylim(-1.05, 1.05)             # both signed in [-1, 1]
        _integer_steps(ax)
    fig.suptitle(f"manifold realignment: A={Path(result['run_a']).name}  B={Path(result['run_b']).name}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def pair_sweep_runs(sweep_dir: Path) -> list[tuple[Path, Path]]:
    """Pairs of runs that differ only in backbone: same seed, finetune mode and training data.

    Each non-base backbone is paired with the run of its base (``backbone.base``); without such a run, every
    two runs of the group are paired.
    """
    runs = []
    for cfg_path in sorted(Path(sweep_dir).glob("**/.hydra/config.yaml")):
        run = cfg_path.parent.parent
        if not run_steps(run):
            continue
        cfg = OmegaConf.load(cfg_path)
        key = (str(cfg.get("seed")), str(OmegaConf.select(cfg, "finetune.mode")), str(OmegaConf.select(cfg, "data.train")))
        runs.append((key, str(OmegaConf.select(cfg, "backbone.name")), str(OmegaConf.select(cfg, "backbone.base")), run))
    pairs = []
    for key in sorted({r[0] for r in runs}):
        group = [r for r in runs if r[0] == key]
        by_name = {r[1]: r for r in group}
        paired = False
        for _, name, base, run in group:
            if base in by_name and base != name:
                pairs.append((by_name[base][3], run))
                paired = True
        if not paired:
            pairs += [(group[i][3], group[j][3]) for i in range(len(group)) for j in range(i + 1, len(group))]
    return pairs


def plot_sweep_realignment(results: list[dict], path: Path) -> None:
    """One figure for a sweep: CKA and k-NN between paired runs (same step), raw with their bands, and calibrated."""
    import matplotlib

    from reasoning_embed.utils.io import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for res in results:
        steps = [r["step"] for r in res["series"]]
        label = f"{Path(res['run_a']).name} vs {Path(res['run_b']).name}"
        for ax, key in ((axes[0], "cka"), (axes[1], "knn")):
            line, = ax.plot(steps, [r["a_vs_b"][key] for r in res["series"]], label=label)
            if res["series"] and f"{key}_band" in res["series"][0]["a_vs_b"]:
                ax.fill_between(steps, [r["a_vs_b"][f"{key}_band"][0] for r in res["series"]],
                                [r["a_vs_b"][f"{key}_band"][1] for r in res["series"]], alpha=0.2,
                                color=line.get_color(), label=f"{label}: 95% band")
            if res["series"] and f"{key}_calibrated" in res["series"][0]["a_vs_b"]:
                ax.plot(steps, [r["a_vs_b"][f"{key}_calibrated"]["score"] for r in res["series"]], "--",
                        color=line.get_color(), label=f"{label}: calibrated")
    axes[0].set_title("CKA between paired runs (same step)")
    axes[1].set_title("k-NN Jaccard between paired runs (same step)")
    for ax in axes:
        ax.set_ylim(-0.05, 1.05)
        _integer_steps(ax)
        ax.legend(fontsize=5)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def sweep_realignment(sweep: Path, out: Path, n_perm: int = 50, cache_dir=None,
                      plateau_tol: dict | None = None) -> list[dict]:
    """The report's realignment section: every pair of the sweep, one combined figure, and per pair the last
    step and where its CKA and k-NN curves plateau (``plateau_tol``: metric -> tolerance, see
    :mod:`reasoning_embed.report.plateau`; ``cache_dir``: the feature cache, whose recorded step comparisons
    are reused)."""
    from reasoning_embed.report.plateau import DEFAULT_TOL, plateau_step

    tols = dict(DEFAULT_TOL if plateau_tol is None else plateau_tol)
    results = [realign_pair(a, b, out / "realignment" / f"{a.name}__vs__{b.name}", n_perm=n_perm, plot=False,
                            cache_dir=cache_dir)
               for a, b in pair_sweep_runs(sweep)]
    if results:
        plot_sweep_realignment(results, out / "realignment.png")
    summary = []
    for r in results:
        steps = [row["step"] for row in r["series"]]
        plateau = {m: plateau_step(steps, [row["a_vs_b"][m] for row in r["series"]], tol) for m, tol in tols.items()}
        summary.append({"run_a": r["run_a"], "run_b": r["run_b"], **_run_labels(Path(r["run_a"]), Path(r["run_b"])),
                        "last": r["series"][-1], "plateau": plateau})
    return summary


def _run_labels(run_a: Path, run_b: Path) -> dict:
    def read(run):
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        return (str(OmegaConf.select(cfg, "backbone.name")), str(OmegaConf.select(cfg, "finetune.mode")),
                OmegaConf.select(cfg, "seed"))

    (a, finetune, seed), (b, _, _) = read(run_a), read(run_b)
    return {"backbone_a": a, "backbone_b": b, "finetune": finetune, "seed": seed}
