"""The study table: scores per backbone x finetune mode, and each backbone against its base with the seed as
the unit of replication (see :mod:`reasoning_embed.report.stats`)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

import numpy as np

from reasoning_embed.report.stats import apply_holm, compare_seeds
from reasoning_embed.utils.fmt import fmt_number

__all__ = ["aggregates", "build_table", "render_csv", "render_markdown"]


def aggregates(run: dict) -> dict[str, float]:
    """Per run: benchmark/Mean(Task), benchmark/Mean(Type), benchmark/type:T."""
    out = {}
    for bench, tasks in run["scores"].items():
        if not tasks:
            continue
        out[f"{bench}/Mean(Task)"] = float(np.mean(list(tasks.values())))
        types = run["types"].get(bench, {})
        by_type = defaultdict(list)
        for t, v in tasks.items():
            by_type[types.get(t, "task")].append(v)
        type_means = {ty: float(np.mean(v)) for ty, v in by_type.items()}
        out[f"{bench}/Mean(Type)"] = float(np.mean(list(type_means.values())))
        if len(type_means) > 1:
            for ty, v in type_means.items():
                out[f"{bench}/type:{ty}"] = v
    return out


def _score_rows(groups: dict, columns: list[str]) -> list[dict]:
    rows = []
    for (backbone, finetune), rs in sorted(groups.items()):
        cells = {}
        for col in columns:
            vals = [a[col] for a in map(aggregates, rs) if col in a]
            if not vals:
                cells[col] = {"text": "n/a (not evaluated)"}
                continue
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            text = f"{np.mean(vals):.2f} ± {std:.2f}" if len(vals) > 1 else f"{vals[0]:.2f} (1 seed, no std)"
            cells[col] = {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "text": text}
        rows.append({"backbone": backbone, "finetune": finetune, "seeds": sorted(r["seed"] for r in rs),
                     "role": rs[0]["role"], "base": rs[0]["base"], "cells": cells})
    return rows


def _paired_task_deltas(rs: list[dict], base_runs: dict, bench: str) -> dict:
    """{seed: {task: run - base}} over the tasks both runs of a seed evaluated."""
    out = {}
    for r in rs:
        b = base_runs.get(r["seed"])
        if b is None or bench not in b["scores"] or bench not in r["scores"]:
            continue
        common = {t: v - b["scores"][bench][t] for t, v in r["scores"][bench].items() if t in b["scores"][bench]}
        if common:
            out[r["seed"]] = common
    return out


def _per_task_view(by_seed: dict) -> list[dict]:
    """Secondary, descriptive view: each task's delta over seeds (tasks of one seed are not independent)."""
    tasks = sorted({t for d in by_seed.values() for t in d})
    out = []
    for t in tasks:
        v = np.array([d[t] for d in by_seed.values() if t in d])
        out.append({"task": t, "n_seeds": int(v.size), "mean_delta": float(v.mean()),
                    "std_delta": float(v.std(ddof=1)) if v.size > 1 else float("nan")})
    return out


def _empty_reason(groups: dict) -> str:
    seen = sorted({(b, rs[0]["base"]) for (b, _), rs in groups.items()})
    listing = ", ".join(f"{b} (base: {base})" for b, base in seen) or "none"
    return (f"no backbone/base pair with the same finetune mode was found among the finished runs; backbones seen: "
            f"{listing}. A comparison needs runs of a backbone whose backbone.base names another backbone that "
            "was also run (same finetune mode, matching seeds).")


def build_table(runs: list[dict], alpha: float = 0.05, n_boot: int = 10000, margin: float = 1.0) -> dict:
    """Score rows and the seed-level comparisons (Holm-adjusted over all comparisons of the table)."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["backbone"], r["finetune"])].append(r)
    columns = sorted({k for r in runs for k in aggregates(r)})
    deltas, comparisons = [], []
    for (backbone, finetune), rs in sorted(groups.items()):
        base = rs[0]["base"]
        if base in (None, "None", backbone) or (base, finetune) not in groups:
            continue
        base_runs = {r["seed"]: r for r in groups[(base, finetune)]}
        for bench in sorted({b for r in rs for b in r["scores"]}):
            entry = {"backbone": backbone, "base": base, "finetune": finetune, "benchmark": bench}
            by_seed = _paired_task_deltas(rs, base_runs, bench)
            if not by_seed:
                deltas.append({**entry, "note": "no seed with both runs evaluated on a common task"})
                continue
            cmp = compare_seeds({s: list(d.values()) for s, d in by_seed.items()}, margin, alpha, n_boot)
            comparisons.append(cmp)
            deltas.append({**entry, "comparison": cmp, "per_task": _per_task_view(by_seed)})
    apply_holm(comparisons)
    for d in deltas:
        if "comparison" in d:
            d.update(d.pop("comparison").as_dict())
    table = {"columns": columns, "rows": _score_rows(groups, columns), "deltas": deltas, "alpha": alpha,
             "margin": margin, "n_comparisons": len(comparisons)}
    if not deltas:
        table["empty_reason"] = _empty_reason(groups)
    return table


def _comparison_lines(table: dict) -> list[str]:
    a, m = table["alpha"], table.get("margin", 1.0)
    lines = ["", f"## Backbone vs base: per-seed deltas of Mean(Task) (the seed is the unit; alpha = {a}, "
             f"equivalence margin ±{m:g}, Holm over {table.get('n_comparisons', 0)} comparisons)", "",
             "Per-seed delta = Mean(Task) of the run minus its base's (same seed, tasks both evaluated). CI: "
             "hierarchical bootstrap (seeds, then tasks within seed). p: exact sign-flip over seeds (p min: the "
             f"smallest p the design can reach, 2/2^seeds). TOST: equivalence within ±{m:g} (t over seeds). Seeds "
             f"needed: for the observed spread, to detect a ±{m:g} difference / to show equivalence (power 0.8).", "",
             "| backbone | base | finetune | benchmark | seeds | per-seed deltas | mean delta | 95% CI | p (sign-flip) "
             "| p min | p Holm | p TOST (Holm) | seeds needed (diff / equiv) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in table["deltas"]:
        head = f"| {d['backbone']} | {d['base']} | {d['finetune']} | {d['benchmark']} |"
        if "note" in d:
            lines.append(f"{head} 0 | {d['note']} | | | | | | | | |")
            continue
        per = ", ".join(f"{x:+.2f}" for x in d["per_seed_delta"])
        need = d["seeds_needed"]
        lines.append(f"{head} {d['n_seeds']} | {per} | {d['mean_delta']:+.2f} | [{d['ci_low']:+.2f}, "
                     f"{d['ci_high']:+.2f}] | {fmt_number(d['p_sign_flip'], '.3g')} | {fmt_number(d['p_min'], '.3g')} | "
                     f"{fmt_number(d['p_holm'], '.3g')} | {fmt_number(d['p_tost_holm'], '.3g')} | {need.get('difference') or 'n/a'} / "
                     f"{need.get('equivalence') or 'n/a'} | {d['verdict_text']} |")
    if table.get("empty_reason"):
        lines += ["", f"No comparison: {table['empty_reason']}"]
    per_task = [d for d in table["deltas"] if d.get("per_task")]
    if per_task:
        lines += ["", "### Secondary view: per-task deltas (mean ± std over seeds; descriptive, tasks of one seed "
                  "share a model pair and are not independent tests)", "",
                  "| backbone | base | finetune | benchmark | task | seeds | mean delta | std |", "|---|---|---|---|---|---|---|---|"]
        for d in per_task:
            for t in d["per_task"]:
                lines.append(f"| {d['backbone']} | {d['base']} | {d['finetune']} | {d['benchmark']} | {t['task']} | "
                             f"{t['n_seeds']} | {t['mean_delta']:+.2f} | {fmt_number(t['std_delta'], '.3g')} |")
    return lines


def render_markdown(table: dict, failed: list[dict], hrsa_markdown: str = "", unusable: list[dict] = ()) -> str:
    """``unusable``: runs whose trained model collapsed or retrieves worse than untrained (their scores stay in
    the tables, flagged above them)."""
    cols = table["columns"]
    lines = ["# Study report", ""]
    if unusable:
        lines += [f"**Note: {len(unusable)} run(s) ended with an unusable model** (a finished run's scores stay in "
                  "the tables below):", ""]
        lines += [f"- `{u['dir']}` ({u['backbone']}, {u['finetune']}, seed {u['seed']}): {'; '.join(u['unusable'])}"
                  for u in unusable] + [""]
    lines += ["## Scores (x100), mean ± std over seeds", "",
              "| backbone | finetune | seeds | " + " | ".join(cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for r in table["rows"]:
        lines.append(f"| {r['backbone']} | {r['finetune']} | {','.join(map(str, r['seeds']))} | "
                     + " | ".join(r["cells"][c]["text"] for c in cols) + " |")
    lines += _comparison_lines(table)
    lines += ["", "## Failed jobs", ""]
    lines += [f"- `{f['dir']}` ({f['backbone']}, {f['finetune']}, seed {f['seed']}): {f['reason']}" for f in failed] or ["none"]
    return "\n".join(lines) + "\n" + hrsa_markdown


def render_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backbone", "finetune", "seeds"] + [f"{c} mean" for c in table["columns"]]
               + [f"{c} std" for c in table["columns"]])
    for r in table["rows"]:
        w.writerow([r["backbone"], r["finetune"], " ".join(map(str, r["seeds"]))]
                   + [r["cells"][c].get("mean", "") for c in table["columns"]]
                   + [r["cells"][c].get("std", "") for c in table["columns"]])
    return buf.getvalue()
