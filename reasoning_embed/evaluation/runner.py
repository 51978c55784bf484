"""Run a benchmark through mteb with the adapter: one task at a time, failures caught, reported and counted.

Nothing is read from or written to mteb's result cache (``cache=None``): every task is evaluated now, with
the instruction the table gives it — the paper's BRIGHT runs were silently served the first instruction's
cached results. Each task's mteb ``TaskResult`` is written to ``OUT/results/<task>.json``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from pathlib import Path

from reasoning_embed.evaluation.errors import EvaluationFailedError

log = logging.getLogger("reasoning_embed.evaluation")


def _loud(msg: str) -> None:
    log.error(msg)
    print(msg, file=sys.stderr, flush=True)


def run_tasks(adapter, tasks, out_dir, batch_size: int = 32, show_progress: bool = False):
    """Evaluate ``tasks`` one by one. Returns (per-task summaries, failures). A task that raises, reports an
    mteb error, or yields no usable main score is a failure: logged with its traceback, never skipped silently."""
    import mteb

    from reasoning_embed.evaluation.summary import task_score

    out_dir = Path(out_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for n, task in enumerate(tasks, 1):
        name = task.metadata.name
        log.info("[%d/%d] %s", n, len(tasks), name)
        start = time.perf_counter()
        try:
            result = mteb.evaluate(adapter, task, cache=None, raise_error=True, co2_tracker=False,
                                   overwrite_strategy="always", show_progress_bar=show_progress,
                                   encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress})
            if result.exceptions:
                raise RuntimeError("; ".join(str(e.exception) for e in result.exceptions))
            if len(result.task_results) != 1:
                raise RuntimeError(f"mteb returned {len(result.task_results)} results for one task")
            task_result = result.task_results[0]
            score, per_subset = task_score(task_result.scores)
            if math.isnan(score):
                raise ValueError("main score is NaN")
            task_result.to_disk(out_dir / "results" / f"{name}.json")
        except Exception as e:  # noqa: BLE001 -- every failure is recorded and reported
            err = f"{type(e).__name__}: {e}"
            _loud(f"TASK FAILED: {name}: {err}")
            log.error("%s", traceback.format_exc())
            failed.append({"task": name, "type": task.metadata.type, "error": err})
            continue
        used = adapter.instructions_used.get(name)
        if used is None and getattr(task.metadata, "tasks", None):  # an aggregate: its parts were encoded
            parts = {t.metadata.name: adapter.instructions_used.get(t.metadata.name, {}) for t in task.metadata.tasks}
            used = {"instruction": "; ".join(f"{k}: {v.get('instruction')}" for k, v in parts.items()),
                    "source": "subtasks", "sides": sorted({s for v in parts.values() for s in v.get("sides", [])})}
        used = used or {}
        done.append({
            "task": name, "type": task.metadata.type, "score": score, "main_score": task.metadata.main_score,
            "subsets": per_subset, "instruction": used.get("instruction"),
            "instruction_source": used.get("source"), "instruction_sides": used.get("sides", []),
            "seconds": round(time.perf_counter() - start, 3),
        })
        log.info("%s: %s = %.2f", name, task.metadata.main_score, score)
    return done, failed


def evaluate_model(model, benchmark, out_dir, allow_failures: bool = False, *, instructions=None,
                   batch_size: int = 32, read: dict | None = None, device: str = "auto",
                   paths: dict | None = None, max_queries: int | None = None, search_backend: str = "auto",
                   show_progress: bool = False, seed: int = 0) -> dict:
    """Evaluate ``model`` on ``benchmark``; write ``out_dir/results/*.json``, ``summary.json``, ``summary.md``.

    model:      an ``Encoder`` (e.g. ``module.encoder`` at the end of training), a run directory, a model
                export directory, a Hugging Face model directory or hub id (read with ``read``), or
                ``"bm25"``: the lexical baseline (:mod:`.bm25`; retrieval and reranking tasks).
    benchmark:  a shipped name (``local``, ``bright``, ``mteb_multilingual_v2``, ``mteb_code_v1``, ...), a
                config dict / DictConfig (``conf/benchmark/*.yaml`` keys), an mteb benchmark name, or a
                list of mteb task names.
    instructions: instruction table (None = ``conf/instructions/e5.yaml``; a name, path, dict or table).
    paths:      overrides for ``conf/paths/default.yaml`` when ``benchmark`` is a shipped name
                (e.g. ``{"data_dir": cfg.paths.data_dir}`` from a training run).
    Returns the summary dict. Raises EvaluationFailedError (after writing the summary) if a task failed and
    not ``allow_failures``; BenchmarkDataMissingError (before loading the model) if the data is not here.
    """
    from reasoning_embed.evaluation.adapter import MtebEncoderAdapter
    from reasoning_embed.evaluation.bm25 import Bm25SearchAdapter, is_bm25
    from reasoning_embed.evaluation.benchmarks import build_tasks, check_data_available, resolve_benchmark_config
    from reasoning_embed.evaluation.instructions import load_instruction_table
    from reasoning_embed.evaluation.model_loading import load_encoder
    from reasoning_embed.evaluation.summary import build_summary, write_summary

    out_dir = Path(out_dir)
    bench = resolve_benchmark_config(benchmark, paths)
    if max_queries is not None:
        bench["max_queries"] = max_queries
    tasks, local_instructions = build_tasks(bench, seed)
    check_data_available(tasks, bench["name"])
    table = load_instruction_table(instructions)
    table = table.with_tasks(local_instructions, overwrite=False).with_tasks(bench["instructions"] or {})

    spec = model if isinstance(model, (str, Path)) else getattr(model, "name", type(model).__name__)
    if is_bm25(model):  # the lexical baseline: no encoder, mteb's search protocol only
        encoder, adapter = None, Bm25SearchAdapter()
    else:
        encoder = load_encoder(model, read, device)
        adapter = MtebEncoderAdapter(encoder, table, batch_size=batch_size, name=str(spec),
                                     search_backend=search_backend, show_progress=show_progress)
    log.info("evaluating %s on %s: %d task(s), instructions %s", spec, bench["name"], len(tasks), table.name)
    start = time.perf_counter()
    done, failed = run_tasks(adapter, tasks, out_dir, batch_size, show_progress)
    import mteb

    summary = build_summary(done, failed, {
        "model": str(spec), "model_kind": getattr(encoder or adapter, "spec_kind", "encoder"),
        "benchmark": bench["name"], "instruction_table": table.name,
        "query_template": encoder.tokenizer.query_template if encoder is not None else None,
        "mteb_version": mteb.__version__,
        "seconds": round(time.perf_counter() - start, 3), "batch_size": batch_size,
        "calls": adapter.calls,
    })
    write_summary(summary, out_dir)
    log.info("Mean(Task) %s  Mean(Type) %s  -> %s", summary["mean_task"], summary["mean_type"],
             out_dir / "summary.json")
    if failed:
        names = ", ".join(f["task"] for f in failed)
        _loud(f"{len(failed)} of {summary['n_tasks']} task(s) FAILED: {names} (details in {out_dir / 'summary.md'})")
        if not allow_failures:
            raise EvaluationFailedError(f"{len(failed)} task(s) failed: {names}; see {out_dir / 'summary.json'} "
                                        f"(allow_failures=true to accept a partial result)", summary)
    return summary
