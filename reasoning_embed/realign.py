"""Cross-run realignment: ``python -m reasoning_embed.realign runs=[DIR_A,DIR_B] out=DIR`` (or ``sweep=DIR``).

The thin entry point of :mod:`reasoning_embed.report.realignment` (what is compared, bands and calibration
are described there). Writes ``realignment.json`` and ``realignment.png``; with ``sweep=DIR``, pairs the runs
that differ only in backbone (same seed, finetune mode and data) and writes one sub-directory per pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from reasoning_embed.report.realignment import pair_sweep_runs, plot_realignment, realign_pair, run_steps
from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

__all__ = ["main", "pair_sweep_runs", "plot_realignment", "realign_pair", "run_steps"]

log = logging.getLogger("reasoning_embed.realign")


def _log_wandb(results: list[dict], cfg) -> None:
    import os

    if os.environ.get("WANDB_MODE") == "disabled" or not cfg.get("wandb", True):
        return
    import wandb

    run = wandb.init(project=cfg.get("wandb_project", "reasoning-embed"), job_type="realign",
                     dir=str(cfg.out), group=os.environ.get("WANDB_RUN_GROUP"), reinit="finish_previous")
    for res in results:
        s = res["series"]
        name = f"{Path(res['run_a']).name} vs {Path(res['run_b']).name}"
        run.log({f"realign/{name}": wandb.plot.line_series(
            xs=[r["step"] for r in s],
            ys=[[r["a_vs_b"]["cka"] for r in s], [r["a_vs_init"]["cka"] for r in s],
                [r["b_vs_init"]["cka"] for r in s], [r["a_vs_b"]["knn"] for r in s]],
            keys=["CKA A vs B", "CKA A vs A@0", "CKA B vs B@0", "kNN A vs B"], title=name, xname="step")})
    run.finish()


def _pairs(cfg) -> list[tuple[Path, Path, Path]]:
    from reasoning_embed.errors import ReasoningEmbedError

    out = Path(cfg.out)
    if cfg.get("sweep"):
        pairs = pair_sweep_runs(Path(cfg.sweep))
        if not pairs:
            raise ReasoningEmbedError(f"no pair of runs with saved HRSA features found under {cfg.sweep}")
        return [(a, b, out / f"{a.name}__vs__{b.name}") for a, b in pairs]
    runs = list(cfg.runs or [])
    if len(runs) != 2:
        raise ReasoningEmbedError(f"runs= needs exactly two run directories, got {runs}")
    return [(Path(runs[0]), Path(runs[1]), out)]


@hydra.main(version_base="1.3", config_path="conf", config_name="realign")
@user_errors_exit
def main(cfg: DictConfig):
    quiet_environment()
    results = [realign_pair(a, b, out, cfg.k, cfg.n_perm, cfg.seed, bands=cfg.bands, alpha=cfg.alpha,
                            cache_dir=cfg.get("cache_dir"))
               for a, b, out in _pairs(cfg)]
    _log_wandb(results, cfg)
    for res in results:
        last = res["series"][-1]
        log.info("%s vs %s at step %d: CKA %.3f, kNN %.3f", Path(res["run_a"]).name, Path(res["run_b"]).name,
                 last["step"], last["a_vs_b"]["cka"], last["a_vs_b"]["knn"])
    return results


if __name__ == "__main__":
    main()
