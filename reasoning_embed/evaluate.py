"""Evaluate a model on MTEB / BRIGHT / offline tasks: ``python -m reasoning_embed.evaluate``.

    python -m reasoning_embed.evaluate model=outputs/train/runs/<run> benchmark=local out=outputs/eval/x
    python -m reasoning_embed.evaluate model=<run> benchmark=bright out=DIR
    python -m reasoning_embed.evaluate model=Qwen/Qwen2.5-1.5B read.attention=causal tasks=[STS12,ArguAna]

Writes ``DIR/results/<task>.json`` (mteb TaskResult), ``DIR/summary.json`` and ``DIR/summary.md`` (per task
main score x100, per-type means, Mean(Task), Mean(Type), the instruction each task got, the ``failed``
list). Exit status: 0 all tasks ran; 1 some task failed (unless ``allow_failures=true``); 2 a problem found
before running (bad configuration, model not found, benchmark data not cached while offline).
See ``conf/evaluate.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.evaluate")


def _benchmark_spec(cfg: DictConfig):
    bench = OmegaConf.to_container(cfg.benchmark, resolve=True)
    if cfg.get("tasks"):
        tasks = cfg.tasks
        tasks = [str(t) for t in tasks] if not isinstance(tasks, str) else [t.strip() for t in tasks.split(",")]
        bench.update(name="tasks" if bench.get("name") in (None, "local") else bench["name"], mteb_benchmark=None,
                     mteb_tasks=tasks, local_tasks=[])
    if cfg.get("max_queries") is not None:
        bench["max_queries"] = cfg.max_queries
    return bench


def evaluate(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run the configured evaluation into ``out_dir`` (``out=``, else the Hydra run dir). Returns the summary."""
    from reasoning_embed.evaluation.runner import evaluate_model

    bench = _benchmark_spec(cfg)
    if cfg.get("prefetch"):
        from reasoning_embed.evaluation.benchmarks import build_tasks, prefetch, resolve_benchmark_config

        tasks, _ = build_tasks(resolve_benchmark_config(bench), cfg.seed)
        fetched = prefetch(tasks)
        print(f"prefetched {len(fetched)} task(s) into the Hugging Face cache: {', '.join(fetched) or '-'}")
        return {"prefetched": fetched}
    if cfg.get("model_path") in (None, "???"):
        from reasoning_embed.evaluation.errors import EvaluationConfigError

        raise EvaluationConfigError("model=... is required (a run directory, a model export, an HF dir or hub id)")
    summary = evaluate_model(
        cfg.model_path, bench, out_dir, allow_failures=bool(cfg.allow_failures),
        instructions=OmegaConf.to_container(cfg.instructions, resolve=True), batch_size=int(cfg.batch_size),
        read=OmegaConf.to_container(cfg.read, resolve=True), device=cfg.device, search_backend=cfg.search_backend,
        show_progress=bool(cfg.show_progress), seed=int(cfg.seed))
    from reasoning_embed.utils.fmt import fmt_number

    print(f"Mean(Task) {fmt_number(summary['mean_task'], '.2f')}  Mean(Type) {fmt_number(summary['mean_type'], '.2f')}  "
          f"({summary['n_succeeded']} task(s) ran, {summary['n_failed']} failed) -> {Path(out_dir) / 'summary.md'}")
    return summary


# absolute, so that main() also works when called from Python (tests), not only as `python -m`
@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@user_errors_exit
def _hydra_main(cfg: DictConfig) -> float | None:
    quiet_environment()
    from reasoning_embed.evaluation.errors import EvaluationFailedError
    from reasoning_embed.utils.hydra_utils import results_dir

    out_dir = results_dir(cfg)  # out= when given, even with hydra.run.dir set elsewhere
    with open_dict(cfg):
        cfg.out = out_dir
    try:
        summary = evaluate(cfg, out_dir)
    except EvaluationFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    return summary.get("mean_task")


def _rewrite_argv(argv: list[str]) -> list[str]:
    """``model=X`` -> ``model_path=X``: ``model`` is a config group of the train config in the same conf/
    directory, so Hydra would read ``model=X`` as choosing conf/model/X.yaml."""
    return [("model_path=" + a[len("model="):]) if a.startswith("model=") else a for a in argv]


def main() -> None:
    sys.argv = [sys.argv[0], *_rewrite_argv(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
