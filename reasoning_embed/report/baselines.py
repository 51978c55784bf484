"""The trained embedders against the built-in baselines, per task: how many runs reach BM25, and how far the rest are.

Two sources, each compared exactly as it was scored:

- the held-out validation sets (``val_ndcg@10``): every run's ``metrics.json["baselines"]`` holds BM25 and
  MiniLM on the run's own validation sample (it depends on the seed), so each run is compared with its own;
- every benchmark the runs were evaluated on (``eval.benchmark``; ``report.bm25_benchmarks`` limits which, as
  BM25's code-aware tokens are English words and identifiers): the report scores BM25 on it once
  (``evaluation.runner.evaluate_model("bm25", ...)``, into ``<report>/baselines/bm25/<benchmark>/``) per distinct
  benchmark config (the runs' data paths included), and per seed when it samples its queries (``max_queries``). Tasks BM25 cannot
  run (no retrieval) are listed as failed there and left out of the comparison.

A task's row: the baseline's score, each (backbone, finetune)'s mean and lowest run, how many runs are >= the
baseline, and the lowest run's margin (run - baseline). ``Mean(Task)`` rows compare over the tasks both have.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from reasoning_embed.utils.fmt import fmt_number

__all__ = ["against_baselines", "benchmark_baselines", "render_baselines_markdown"]

log = logging.getLogger("reasoning_embed.report")

VAL = "val_ndcg@10"
MEAN = "Mean(Task)"


def _eval_specs(run: Path, only: list[str] | None) -> list[tuple[str, dict, dict, int]]:
    """(benchmark name as the run's metrics.json keys it, resolved benchmark config, paths, seed) per benchmark of
    ``only`` (all when None); a benchmark left out is not even resolved."""
    from reasoning_embed.evaluation.benchmarks import benchmark_key, resolve_benchmark_config

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    benches = OmegaConf.select(cfg, "eval.benchmark")
    if not benches:
        return []
    benches = [benches] if isinstance(benches, str) else list(OmegaConf.to_container(benches, resolve=True))
    paths = OmegaConf.to_container(cfg.paths, resolve=True) if "paths" in cfg else None
    return [(benchmark_key(b), resolve_benchmark_config(b, paths), paths, int(cfg.get("seed", 0))) for b in benches
            if only is None or benchmark_key(b) in only]


def benchmark_baselines(runs: list[dict], out: Path, only: list[str] | None = None
                        ) -> dict[str, dict[str, dict[str, float]]]:
    """BM25 on every benchmark each run was evaluated on (of ``only``, when given): ``{run dir: {benchmark: {task:
    score x100}}}``, scored once per distinct benchmark config (and seed, when the benchmark samples its queries),
    so runs of one sweep that read different data under the same benchmark name are each compared with their own."""
    from reasoning_embed.evaluation.runner import evaluate_model
    from reasoning_embed.utils.hashing import spec_hash

    scored: dict[str, dict] = {}
    dir_of_name: dict[str, str] = {}   # directory label -> the config that owns it (another gets a suffix)
    per_run: dict[str, dict] = {}
    for run in runs:
        for name, bench, paths, seed in _eval_specs(Path(run["dir"]), only):
            sampled = bench.get("max_queries") is not None
            key = spec_hash([bench, seed if sampled else None])
            if key not in scored:
                label = f"{name}-s{seed}" if sampled else name
                owner = dir_of_name.setdefault(label, key)
                where = out / "baselines" / "bm25" / (label if owner == key else f"{label}-{key[:8]}")
                log.info("scoring the BM25 baseline on %s (%s)", name, where)
                summary = evaluate_model("bm25", bench, where, allow_failures=True, paths=paths, seed=seed)
                scored[key] = {t["task"]: float(t["score"]) for t in summary.get("tasks", [])
                               if t.get("score") is not None}
            per_run.setdefault(run["dir"], {})[name] = scored[key]
    return per_run


def _with_mean(scores: dict[str, float], tasks: set[str]) -> dict[str, float]:
    common = sorted(tasks)
    return {**{t: scores[t] for t in common}, **({MEAN: float(np.mean([scores[t] for t in common]))} if common else {})}


def against_baselines(runs: list[dict], bench_baselines: dict[str, dict]) -> list[dict]:
    """One row per (benchmark, baseline, task or Mean(Task), backbone, finetune): see the module docstring.
    ``bench_baselines``: :func:`benchmark_baselines`'s ``{run dir: {benchmark: {task: score}}}``."""
    pairs: dict[tuple, list[tuple[float, float]]] = {}  # (bench, baseline, task, backbone, finetune) -> (run, base)
    for run in runs:
        refs = {(VAL, name): scores for name, scores in run.get("val_baselines", {}).items()}
        for bench, ref in bench_baselines.get(run["dir"], {}).items():
            refs[(bench, "bm25")] = ref
        for (bench, name), ref in refs.items():
            own = run["scores"].get(bench) or {}
            tasks = set(own) & set(ref)
            if not tasks:
                continue
            mine, theirs = _with_mean(own, tasks), _with_mean(ref, tasks)
            for task in mine:
                pairs.setdefault((bench, name, task, run["backbone"], run["finetune"]), []).append(
                    (mine[task], theirs[task]))
    rows = []
    for (bench, name, task, backbone, finetune), values in sorted(pairs.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2] != MEAN, kv[0][2], kv[0][3], kv[0][4])):
        run_scores = np.array([v[0] for v in values])
        margins = np.round([v[0] - v[1] for v in values], 10) + 0.0  # a tie is 0, not -1e-15 (and not "-0.00")
        rows.append({"benchmark": bench, "baseline": name, "task": task, "backbone": backbone, "finetune": finetune,
                     "n": len(values), "baseline_score": float(np.mean([v[1] for v in values])),
                     "mean": float(run_scores.mean()), "lowest": float(run_scores.min()),
                     "at_or_above": int((margins >= 0).sum()), "lowest_margin": float(margins.min()),
                     "mean_margin": float(margins.mean())})
    return rows


def baseline_verdicts(rows: list[dict], baseline: str = "bm25") -> list[str]:
    """One line per benchmark: where every run reaches the baseline, and where not (with the closest miss)."""
    lines = []
    for bench in sorted({r["benchmark"] for r in rows}):
        mine = [r for r in rows if r["benchmark"] == bench and r["baseline"] == baseline]
        if not mine:
            continue
        tasks = list(dict.fromkeys(r["task"] for r in mine))
        met = [t for t in tasks if all(r["at_or_above"] == r["n"] for r in mine if r["task"] == t)]
        n_runs = sum(r["n"] for r in mine if r["task"] == tasks[0])
        missed = []
        for t in tasks:
            if t in met:
                continue
            rs = [r for r in mine if r["task"] == t]
            missed.append(f"{t} ({sum(r['at_or_above'] for r in rs)} of {sum(r['n'] for r in rs)} runs; mean margin "
                          f"{np.mean([r['mean_margin'] for r in rs]):+.2f}, lowest run {min(r['lowest_margin'] for r in rs):+.2f})")
        name = baseline.upper()
        line = (f"{bench}: all {n_runs} runs >= {name} on {', '.join(met)}" if met
                else f"{bench}: on no task are all {n_runs} runs >= {name}")
        lines.append(line + (f"; runs >= {name} on {'; '.join(missed)}" if missed else ""))
    return lines


def render_baselines_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "## Against the baselines (x100; margin = run - baseline)", "",
             f"`{VAL}`: each run against the baselines on its own validation sample (`metrics.json` baselines). Other "
             "benchmarks: BM25 scored by the report on the same tasks (`baselines/bm25/`).", ""]
    lines += [f"- {v}" for v in baseline_verdicts(rows)] + [""]
    lines += ["| benchmark | baseline | task | backbone | finetune | baseline score | runs: mean (lowest) | runs >= baseline "
              "| mean margin | lowest margin |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['baseline']} | {r['task']} | {r['backbone']} | {r['finetune']} | "
                     f"{r['baseline_score']:.2f} | {r['mean']:.2f} ({r['lowest']:.2f}) | {r['at_or_above']} of {r['n']} | "
                     f"{r['mean_margin']:+.2f} | {fmt_number(r['lowest_margin'], '+.2f')} |")
    return "\n".join(lines) + "\n"
