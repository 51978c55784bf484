"""Build a study report: read the runs, compare backbones with their bases, write table.md / .csv / .json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reasoning_embed.report.backbone_hrsa import backbone_hrsa, render_hrsa_markdown
from reasoning_embed.report.runs import collect_runs, run_dirs
from reasoning_embed.report.tables import build_table, render_csv, render_markdown

__all__ = ["make_report"]

log = logging.getLogger("reasoning_embed.report")


def make_report(cfg) -> dict:
    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.utils.io import atomic_write_json, atomic_write_text

    if not cfg.get("sweep") and not cfg.get("runs"):
        raise ReasoningEmbedError("give sweep=DIR (a multirun directory) or runs=[DIR,...]")
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.sweep or ".") / "report"
    dirs = run_dirs(cfg)
    runs, failed = collect_runs(dirs)
    if not runs and not failed:
        raise ReasoningEmbedError(f"no run directories (with .hydra/config.yaml) under {cfg.get('sweep') or cfg.runs}")
    table = build_table(runs, cfg.alpha, cfg.n_boot, float(cfg.get("margin", 1.0)))
    if table.get("empty_reason"):
        log.warning("no comparison table: %s", table["empty_reason"])
    unusable = [r for r in runs + failed if r["unusable"]]
    for r in unusable:
        log.warning("%s: the trained model is unusable: %s", r["dir"], "; ".join(r["unusable"]))
    report = {"table": table, "failed": failed, "runs": [r["dir"] for r in runs],
              "unusable": [{k: r[k] for k in ("dir", "backbone", "finetune", "seed", "unusable")} for r in unusable]}
    if cfg.get("realign", True) and cfg.get("sweep"):
        from reasoning_embed.report.realignment import sweep_realignment

        out.mkdir(parents=True, exist_ok=True)
        report["realignment"] = sweep_realignment(Path(cfg.sweep), out, cache_dir=cfg.get("realign_cache_dir"))
    if cfg.get("hrsa", True):
        report["backbone_hrsa"] = backbone_hrsa(dirs, out, [str(x) for x in (cfg.get("hrsa_overrides") or [])])
    hrsa_md = render_hrsa_markdown(report.get("backbone_hrsa") or [])
    atomic_write_text(out / "table.md", render_markdown(table, failed, hrsa_md, report["unusable"]))
    atomic_write_text(out / "table.csv", render_csv(table))
    atomic_write_json(out / "report.json", report)
    _log_wandb(table, out, cfg, report.get("backbone_hrsa") or [])
    log.info("report written to %s (%d runs, %d failed)", out, len(runs), len(failed))
    return report


def _log_wandb(table: dict, out: Path, cfg, backbone_hrsa_results: list[dict]) -> None:
    import os

    if os.environ.get("WANDB_MODE") == "disabled" or not cfg.get("wandb", True):
        return
    import wandb

    run = wandb.init(project=cfg.get("wandb_project", "reasoning-embed"), job_type="report", dir=str(out),
                     group=os.environ.get("WANDB_RUN_GROUP"), reinit="finish_previous")
    cols = ["backbone", "finetune"] + table["columns"]
    run.log({"report/table": wandb.Table(columns=cols, data=[
        [r["backbone"], r["finetune"]] + [r["cells"][c].get("mean") for c in table["columns"]] for r in table["rows"]])})
    dcols = ["backbone", "base", "finetune", "benchmark", "n_seeds", "mean_delta", "ci_low", "ci_high", "p_sign_flip",
             "p_min", "p_holm", "p_tost_holm", "verdict"]
    run.log({"report/deltas": wandb.Table(columns=dcols, data=[[d.get(c) for c in dcols] for d in table["deltas"]
                                                               if "note" not in d])})
    hcols = ["backbone", "base", "cka", "cka_calibrated", "cka_debiased", "cka_p", "knn10", "knn10_calibrated",
             "knn10_chance", "procrustes_cosine_test"]
    hrows = [[r.get(c) for c in hcols] + [json.dumps(r.get("probe")), r.get("note")] for r in backbone_hrsa_results]
    if hrows:
        run.log({"report/backbone_hrsa": wandb.Table(columns=hcols + ["probe", "note"], data=hrows)})
    if (out / "realignment.png").exists():
        run.log({"report/realignment": wandb.Image(str(out / "realignment.png"))})
    run.finish()
