"""Build a study report: read the runs, compare backbones with their bases, write table.md / .csv / .json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reasoning_embed.report.backbone_hrsa import backbone_hrsa, render_hrsa_markdown
from reasoning_embed.report.baselines import (against_baselines, baseline_verdicts, benchmark_baselines,
                                              render_baselines_markdown)
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
    extra_md = ""
    if cfg.get("baselines", True) and runs:
        only = cfg.get("bm25_benchmarks")
        report["baselines"] = _baselines(runs, out, [str(b) for b in only] if only is not None else None)
        extra_md += render_baselines_markdown(report["baselines"])
        for line in baseline_verdicts(report["baselines"]):
            log.info("against BM25: %s", line)
    if cfg.get("realign", True) and cfg.get("sweep"):
        from reasoning_embed.report.plateau import realignment_groups, render_realignment_markdown
        from reasoning_embed.report.realignment import sweep_realignment

        out.mkdir(parents=True, exist_ok=True)
        tol = cfg.get("plateau_tol")
        report["realignment"] = sweep_realignment(Path(cfg.sweep), out, cache_dir=cfg.get("realign_cache_dir"),
                                                  plateau_tol=dict(tol) if tol is not None else None)
        report["realignment_groups"] = realignment_groups(report["realignment"])
        extra_md += render_realignment_markdown(report["realignment_groups"])
        for g in report["realignment_groups"]:
            log.info("realignment %s vs %s (%s): %s", g["backbone_a"], g["backbone_b"], g["finetune"], "; ".join(
                f"{m} {v['first']:.3f} -> {v['last']:.3f}, plateau from step "
                + (f"{v['median_step']:g} (median of {v['reached']} of {v['n']} seeds)" if v["reached"]
                   else f"- not reached by step {v['last_step']}") for m, v in g["metrics"].items()))
    if cfg.get("hrsa", True):
        report["backbone_hrsa"] = backbone_hrsa(dirs, out, [str(x) for x in (cfg.get("hrsa_overrides") or [])])
    hrsa_md = extra_md + render_hrsa_markdown(report.get("backbone_hrsa") or [])
    atomic_write_text(out / "table.md", render_markdown(table, failed, hrsa_md, report["unusable"]))
    atomic_write_text(out / "table.csv", render_csv(table))
    atomic_write_json(out / "report.json", report)
    _log_wandb(table, out, cfg, report)
    log.info("report written to %s (%d runs, %d failed)", out, len(runs), len(failed))
    return report


def _baselines(runs: list[dict], out: Path, only: list[str] | None) -> list[dict]:
    """Rows of the runs against the baselines; BM25 on a benchmark that cannot be scored here (its data not
    cached offline, say) is left out with a warning: the rest of the report does not depend on it."""
    from reasoning_embed.errors import ReasoningEmbedError

    try:
        bench = benchmark_baselines(runs, out, only)
    except ReasoningEmbedError as e:
        log.warning("no BM25 on the evaluated benchmarks (%s); the baselines table has the validation sets only", e)
        bench = {}
    return against_baselines(runs, bench)


def _log_wandb(table: dict, out: Path, cfg, report: dict) -> None:
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
    hrows = [[r.get(c) for c in hcols] + [json.dumps(r.get("probe")), r.get("note")]
             for r in report.get("backbone_hrsa") or []]
    if hrows:
        run.log({"report/backbone_hrsa": wandb.Table(columns=hcols + ["probe", "note"], data=hrows)})
    bcols = ["benchmark", "baseline", "task", "backbone", "finetune", "n", "baseline_score", "mean", "lowest",
             "at_or_above", "mean_margin", "lowest_margin"]
    if report.get("baselines"):
        run.log({"report/baselines": wandb.Table(columns=bcols, data=[[r[c] for c in bcols] for r in report["baselines"]])})
    pcols = ["backbone_a", "backbone_b", "finetune", "metric", "first", "last", "median_step", "reached", "n", "tol"]
    prows = [[g["backbone_a"], g["backbone_b"], g["finetune"], m, v["first"], v["last"], v["median_step"], v["reached"],
              v["n"], v["tol"]] for g in report.get("realignment_groups") or [] for m, v in g["metrics"].items()]
    if prows:
        run.log({"report/realignment_plateau": wandb.Table(columns=pcols, data=prows)})
    if (out / "realignment.png").exists():
        run.log({"report/realignment": wandb.Image(str(out / "realignment.png"))})
    run.finish()
