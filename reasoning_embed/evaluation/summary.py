"""Aggregating per-task scores the way the paper reports them, and writing summary.json / summary.md.

- per task: the mean of the task's main score over every (split, subset) it was evaluated on, x100;
- Mean(Task): the mean over tasks;
- per type: the mean over the tasks of that mteb type (Retrieval, STS, Classification, ...);
- Mean(Type): the mean of the per-type means.

Failed tasks are not averaged in; they are listed under ``failed`` and ``complete`` is false, so a partial
mean is never mistaken for a full one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from reasoning_embed.utils.fmt import fmt_number
from reasoning_embed.utils.io import atomic_write_json, atomic_write_text


def task_score(scores: dict) -> tuple[float, dict[str, float]]:
    """(mean main score x100 over splits and subsets, {"split/subset": score x100}) from TaskResult.scores."""
    per = {}
    for split, entries in scores.items():
        for entry in entries:
            value = entry.get("main_score")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"no main score for split {split!r}, subset {entry.get('hf_subset')!r}")
            per[f"{split}/{entry.get('hf_subset', 'default')}"] = 100.0 * float(value)
    if not per:
        raise ValueError("the task produced no scores")
    return sum(per.values()) / len(per), per


def aggregate(task_scores: dict[str, tuple[str, float]]) -> dict:
    """``{task: (type, score)}`` -> Mean(Task), per-type means, Mean(Type)."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for task_type, score in task_scores.values():
        by_type[task_type].append(score)
    type_means = {t: sum(v) / len(v) for t, v in sorted(by_type.items())}
    values = [s for _, s in task_scores.values()]
    return {
        "mean_task": sum(values) / len(values) if values else None,
        "mean_type": sum(type_means.values()) / len(type_means) if type_means else None,
        "type_means": type_means,
        "type_counts": {t: len(v) for t, v in sorted(by_type.items())},
    }


def build_summary(tasks: list[dict], failed: list[dict], meta: dict) -> dict:
    """``tasks``: [{task, type, score, ...}] of the tasks that ran; ``failed``: [{task, error}]."""
    agg = aggregate({t["task"]: (t["type"], t["score"]) for t in tasks})
    return {
        **meta,
        "n_tasks": len(tasks) + len(failed),
        "n_succeeded": len(tasks),
        "n_failed": len(failed),
        "complete": not failed,
        "mean_task": agg["mean_task"],
        "mean_type": agg["mean_type"],
        "type_means": agg["type_means"],
        "type_counts": agg["type_counts"],
        "tasks": tasks,
        "failed": failed,
    }


def summary_markdown(summary: dict) -> str:
    lines = [f"# Evaluation: {summary.get('model', '?')} on {summary.get('benchmark', '?')}", ""]
    if summary["failed"]:
        lines += [f"**INCOMPLETE: {summary['n_failed']} of {summary['n_tasks']} task(s) FAILED** "
                  f"(means below are over the {summary['n_succeeded']} that ran)", ""]
    lines += ["| Task | Type | Score | Instruction (source) |", "|---|---|---:|---|"]
    for t in summary["tasks"]:
        instr = (t.get("instruction") or "").replace("|", "\\|")
        source = t.get("instruction_source", "")
        lines.append(f"| {t['task']} | {t['type']} | {fmt_number(t['score'], '.2f')} | {instr} ({source}) |")
    lines += ["", "| Type | Tasks | Mean |", "|---|---:|---:|"]
    for typ, mean in summary["type_means"].items():
        lines.append(f"| {typ} | {summary['type_counts'][typ]} | {fmt_number(mean, '.2f')} |")
    lines += ["", f"- **Mean(Task)**: {fmt_number(summary['mean_task'], '.2f')}",
              f"- **Mean(Type)**: {fmt_number(summary['mean_type'], '.2f')}",
              f"- tasks: {summary['n_succeeded']} succeeded, {summary['n_failed']} failed", ""]
    lines.append(f"## Failed tasks ({summary['n_failed']})")
    lines.append("")
    if summary["failed"]:
        lines += [f"- `{f['task']}`: {f['error']}" for f in summary["failed"]]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return (atomic_write_json(out_dir / "summary.json", summary),
            atomic_write_text(out_dir / "summary.md", summary_markdown(summary)))


def summary_metrics(summary: dict, prefix: str = "eval/") -> dict[str, float]:
    """A flat dict for a logger / metrics.json: per-task scores, per-type means, Mean(Task), Mean(Type)."""
    out = {f"{prefix}{t['task']}": t["score"] for t in summary["tasks"]}
    out.update({f"{prefix}type/{k}": v for k, v in summary["type_means"].items()})
    if summary["mean_task"] is not None:
        out[f"{prefix}mean_task"] = summary["mean_task"]
        out[f"{prefix}mean_type"] = summary["mean_type"]
    out[f"{prefix}n_failed"] = float(summary["n_failed"])
    return out
