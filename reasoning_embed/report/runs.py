"""Reading a sweep: which run directories belong to it, and each run's configuration and scores."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["collect_runs", "read_metrics", "run_dirs", "task_scores", "task_types", "val_baselines"]


def _tasks(summary: dict) -> dict[str, dict]:
    """The evaluation summary's tasks as {name: {"score", "type"}} (it may hold a list of records)."""
    tasks = summary.get("tasks", {})
    if isinstance(tasks, list):
        return {t["task"]: t for t in tasks}
    return {t: (v if isinstance(v, dict) else {"score": v}) for t, v in tasks.items()}


def task_scores(metrics: dict) -> dict[str, dict[str, float]]:
    """benchmark -> {task: score x100}: the held-out validation sets, then every evaluated benchmark."""
    out: dict[str, dict[str, float]] = {}
    val = {k.split("/")[1]: 100 * v for k, v in metrics.get("final_val", {}).items()
           if k.count("/") == 2 and k.endswith("/ndcg@10")}
    if val:
        out["val_ndcg@10"] = val
    for bench, summary in (metrics.get("eval") or {}).items():
        out[bench] = {t: v["score"] for t, v in _tasks(summary).items() if v.get("score") is not None}
    return out


def val_baselines(metrics: dict) -> dict[str, dict[str, float]]:
    """``{baseline: {set: nDCG@10 x100}}``: the built-in baselines on the run's own validation sample, keyed as
    :func:`task_scores` keys the run's ``val_ndcg@10``."""
    return {name: {k.split("/")[1]: 100 * v for k, v in scores.items() if k.count("/") == 2 and k.endswith("/ndcg@10")}
            for name, scores in (metrics.get("baselines") or {}).items()}


def task_types(metrics: dict) -> dict[str, dict[str, str]]:
    """benchmark -> {task: task type} (``task`` when the summary gives none)."""
    return {bench: {t: v.get("type", "task") for t, v in _tasks(summary).items()}
            for bench, summary in (metrics.get("eval") or {}).items()}


def run_dirs(cfg) -> list[Path]:
    """``runs=`` as given, or every run directory (one holding ``.hydra/config.yaml``) below ``sweep=``.

    Only the path parts *below* the sweep are judged: the report's own ``report/`` sub-directory (which
    holds Hydra configs of the HRSA runs it starts) is skipped, while a sweep that itself lives under a
    folder named ``report`` keeps its runs.
    """
    if cfg.get("runs"):
        return [Path(p) for p in cfg.runs]
    sweep = Path(cfg.sweep)
    return sorted(p.parent.parent for p in sweep.glob("**/.hydra/config.yaml")
                  if "report" not in p.relative_to(sweep).parts)


def read_metrics(run: Path) -> dict:
    """A run's ``metrics.json``, or ``{}`` when it has none (killed before training ended, or failed)."""
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_status(run: Path) -> tuple[str, str]:
    """("complete" | "interrupted" | "failed" | "unfinished", why). An interrupted run (SIGINT/SIGTERM, with a
    resumable checkpoint) is not a failed one: its reason is the command that resumes it."""
    if (run / "interrupted.json").exists():
        info = json.loads((run / "interrupted.json").read_text())
        return "interrupted", f"interrupted ({info.get('signal')}) at step {info.get('step')}; resume: {info.get('resume')}"
    if (run / "failed.json").exists():
        return "failed", json.loads((run / "failed.json").read_text())["error"]
    if not (run / "metrics.json").exists():
        return "unfinished", "no metrics.json (killed, or still running)"
    status = read_metrics(run).get("status", "complete")
    if status != "complete":
        return "unfinished", f"metrics.json says {status!r}: trained, but killed (or still running) before the end"
    return "complete", ""


def collect_runs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(finished runs with their scores, failed or unfinished runs with the reason); each run carries
    ``unusable``: why its trained model is unusable (see :func:`unusable_reasons`), empty when it is not."""
    from reasoning_embed.training.spread import unusable_reasons

    runs, failed = [], []
    for run in paths:
        cfg_path = run / ".hydra" / "config.yaml"
        if not cfg_path.exists():
            continue
        cfg = OmegaConf.load(cfg_path)
        info = {
            "dir": str(run), "backbone": str(OmegaConf.select(cfg, "backbone.name")),
            "base": str(OmegaConf.select(cfg, "backbone.base")), "role": str(OmegaConf.select(cfg, "backbone.role")),
            "finetune": str(OmegaConf.select(cfg, "finetune.mode")), "seed": OmegaConf.select(cfg, "seed"),
        }
        status, reason = run_status(run)
        metrics = read_metrics(run)
        info["unusable"] = unusable_reasons(metrics)  # collapsed, or worse than untrained: listed, never silent
        if status != "complete":
            failed.append({**info, "status": status, "reason": reason})
            continue
        info["scores"] = task_scores(metrics)
        info["types"] = task_types(metrics)
        info["val_baselines"] = val_baselines(metrics)
        runs.append(info)
    return runs, failed
