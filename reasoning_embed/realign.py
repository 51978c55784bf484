"""Cross-run realignment: ``python -m reasoning_embed.realign runs=[DIR_A,DIR_B] out=DIR`` (or ``sweep=DIR``).

Reads the per-step probe embeddings the HRSA callback saved (``<run>/hrsa/features/step_<N>.safetensors``)
and, at every step both runs have, compares run A with run B — linear CKA, k-NN Jaccard, Procrustes
cosine on held-out probe rows (fit on half the texts, scored on the other half) and dimension-wise
correlation — beside each run's similarity to its own step 0, with bootstrap bands (resampling probe texts).
Writes ``realignment.json`` and ``realignment.png``; with ``sweep=DIR``, pairs the runs that differ only in
backbone (same seed, finetune mode and data) and writes one sub-directory per pair.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.realign")
_STEP = re.compile(r"step_(\d+)\.safetensors$")


def run_steps(run_dir: Path) -> dict[int, Path]:
    feats = Path(run_dir) / "hrsa" / "features"
    return {int(m.group(1)): p for p in feats.glob("step_*.safetensors") if (m := _STEP.search(p.name))}


def _metrics(X, Y, k: int, seed: int) -> dict[str, float]:
    from reasoning_embed.hrsa import dimension_wise_correlation, knn_jaccard, linear_cka, orthogonal_procrustes, split_rows

    kk = min(k, X.shape[0] - 1)
    fit, test = split_rows(X.shape[0], 0.5, seed)
    proc = orthogonal_procrustes(X[fit], Y[fit], X[test], Y[test])
    return {
        "cka": linear_cka(X, Y),
        "cka_debiased": linear_cka(X, Y, debiased=True),
        "knn": knn_jaccard(X, Y, k=(kk,)).jaccard[kk],
        "procrustes_cos_heldout": proc.cosine_test,
        "procrustes_cos_insample": proc.cosine,
        "dimcorr": dimension_wise_correlation(X, Y).mean,
    }


def _band(fn, X, Y, n_boot: int, seed: int) -> list[float]:
    from reasoning_embed.hrsa import bootstrap_ci

    if n_boot <= 0:
        return [float("nan"), float("nan")]
    r = bootstrap_ci(fn, X, Y, n_boot=n_boot, seed=seed)
    return [r.low, r.high]


def realign_pair(run_a: Path, run_b: Path, out: Path, k: int = 10, n_boot: int = 100, seed: int = 0,
                 plot: bool = True) -> dict:
    import torch  # noqa: F401

    from reasoning_embed.hrsa import knn_jaccard, linear_cka
    from reasoning_embed.training.hrsa_callback import load_features
    from reasoning_embed.utils.io import atomic_write_json

    steps_a, steps_b = run_steps(run_a), run_steps(run_b)
    if not steps_a or not steps_b:
        from reasoning_embed.errors import ReasoningEmbedError

        missing = run_a if not steps_a else run_b
        raise ReasoningEmbedError(f"{missing}/hrsa/features holds no step_<N>.safetensors: train it with the HRSA "
                                  f"callback on (callbacks.hrsa.enabled=true, save_features=true)")
    common = sorted(set(steps_a) & set(steps_b))
    init_a = load_features(steps_a[min(steps_a)])["embeddings"]
    init_b = load_features(steps_b[min(steps_b)])["embeddings"]
    knn_fn = lambda X, Y: knn_jaccard(X, Y, k=(min(k, X.shape[0] - 1),)).jaccard[min(k, X.shape[0] - 1)]  # noqa: E731
    series = []
    for step in common:
        A = load_features(steps_a[step])["embeddings"]
        B = load_features(steps_b[step])["embeddings"]
        if A.shape[0] != B.shape[0]:
            from reasoning_embed.errors import ReasoningEmbedError

            raise ReasoningEmbedError(f"step {step}: runs have {A.shape[0]} and {B.shape[0]} probe rows; the two "
                                      f"runs must use the same probe set (callbacks.hrsa.probe_file / n_probe)")
        row = {"step": step, "a_vs_b": _metrics(A, B, k, seed)}
        row["a_vs_b"]["cka_band"] = _band(linear_cka, A, B, n_boot, seed)
        row["a_vs_b"]["knn_band"] = _band(knn_fn, A, B, n_boot, seed)
        row["a_vs_init"] = {"cka": linear_cka(A, init_a), "knn": knn_fn(A, init_a)}
        row["b_vs_init"] = {"cka": linear_cka(B, init_b), "knn": knn_fn(B, init_b)}
        series.append(row)
    result = {"run_a": str(run_a), "run_b": str(run_b), "k": k, "n_boot": n_boot, "steps": common, "series": series}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "realignment.json", result)
    if plot:
        plot_realignment(result, out / "realignment.png")
    return result


def plot_realignment(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in result["series"]]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    name_a, name_b = Path(result["run_a"]).name, Path(result["run_b"]).name
    for ax, key, title in ((axes[0], "cka", "linear CKA"), (axes[1], "knn", f"k-NN Jaccard (k={result['k']})")):
        ab = [r["a_vs_b"][key] for r in result["series"]]
        lo = [r["a_vs_b"][f"{key}_band"][0] for r in result["series"]]
        hi = [r["a_vs_b"][f"{key}_band"][1] for r in result["series"]]
        ax.plot(steps, ab, "o-", label="A vs B (same step)")
        ax.fill_between(steps, lo, hi, alpha=0.25)
        ax.plot(steps, [r["a_vs_init"][key] for r in result["series"]], "s--", label="A vs A@0")
        ax.plot(steps, [r["b_vs_init"][key] for r in result["series"]], "^--", label="B vs B@0")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    axes[2].plot(steps, [r["a_vs_b"]["procrustes_cos_heldout"] for r in result["series"]], "o-", label="held-out")
    axes[2].plot(steps, [r["a_vs_b"]["procrustes_cos_insample"] for r in result["series"]], "x:", label="in-sample")
    axes[2].set_title("Procrustes cosine A->B")
    axes[2].legend(fontsize=7)
    axes[3].plot(steps, [r["a_vs_b"]["dimcorr"] for r in result["series"]], "o-")
    axes[3].set_title("dimension-wise correlation A vs B")
    for ax in axes[2:]:
        ax.set_xlabel("step")
    fig.suptitle(f"manifold realignment: A={name_a}  B={name_b}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


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


def _log_wandb(results: list[dict], cfg) -> None:
    import os

    if os.environ.get("WANDB_MODE") == "disabled" or not cfg.get("wandb", True):
        return
    import wandb

    run = wandb.init(project=cfg.get("wandb_project", "reasoning-embed"), job_type="realign",
                     dir=str(cfg.out), group=os.environ.get("WANDB_RUN_GROUP"), reinit="finish_previous")
    for res in results:
        steps = [r["step"] for r in res["series"]]
        name = f"{Path(res['run_a']).name} vs {Path(res['run_b']).name}"
        run.log({f"realign/{name}": wandb.plot.line_series(
            xs=steps,
            ys=[[r["a_vs_b"]["cka"] for r in res["series"]], [r["a_vs_init"]["cka"] for r in res["series"]],
                [r["b_vs_init"]["cka"] for r in res["series"]], [r["a_vs_b"]["knn"] for r in res["series"]]],
            keys=["CKA A vs B", "CKA A vs A@0", "CKA B vs B@0", "kNN A vs B"], title=name, xname="step")})
    run.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="realign")
@user_errors_exit
def main(cfg: DictConfig):
    quiet_environment()
    out = Path(cfg.out)
    results = []
    if cfg.get("sweep"):
        pairs = pair_sweep_runs(Path(cfg.sweep))
        if not pairs:
            from reasoning_embed.errors import ReasoningEmbedError

            raise ReasoningEmbedError(f"no pair of runs with saved HRSA features found under {cfg.sweep}")
        for a, b in pairs:
            results.append(realign_pair(a, b, out / f"{a.name}__vs__{b.name}", cfg.k, cfg.n_boot, cfg.seed))
    else:
        runs = list(cfg.runs or [])
        if len(runs) != 2:
            from reasoning_embed.errors import ReasoningEmbedError

            raise ReasoningEmbedError(f"runs= needs exactly two run directories, got {runs}")
        results.append(realign_pair(Path(runs[0]), Path(runs[1]), out, cfg.k, cfg.n_boot, cfg.seed))
    _log_wandb(results, cfg)
    for res in results:
        last = res["series"][-1]
        log.info("%s vs %s at step %d: CKA %.3f, kNN %.3f", Path(res["run_a"]).name, Path(res["run_b"]).name,
                 last["step"], last["a_vs_b"]["cka"], last["a_vs_b"]["knn"])
    return results


if __name__ == "__main__":
    main()
