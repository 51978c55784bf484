"""Benchmarks: which tasks to run, built from a ``conf/benchmark/*.yaml`` entry, and whether their data is here.

A benchmark config (``conf/benchmark/local.yaml`` documents every key)::

    name: bright
    mteb_benchmark: null        # an mteb benchmark name, e.g. "MTEB(Multilingual, v2)"
    mteb_tasks: [...]           # explicit mteb task names (added to the benchmark's tasks)
    local_tasks: [...]          # offline tasks (reasoning_embed/evaluation/local_tasks.py)
    exclude: []                 # task names to leave out
    languages: null             # restrict explicit mteb_tasks to these languages (mteb.get_tasks)
    eval_splits: null           # restrict explicit mteb_tasks to these splits
    max_queries: null           # cap the queries of each local task (smoke runs, tests)
    instructions: {}            # per-task instruction overrides, on top of the instruction table

Each task appears once: a name listed twice is evaluated once (BRIGHT's 12 domains are 12 tasks, each with
its own instruction, each run exactly once, results never taken from a cache).
"""

from __future__ import annotations

import logging

from reasoning_embed.evaluation.errors import BenchmarkDataMissingError, EvaluationConfigError
from reasoning_embed.evaluation.instructions import CONF_DIR
from reasoning_embed.utils.hub import datasets_cache_dir, hub_cache_dir, hub_reachable, offline_reason

log = logging.getLogger("reasoning_embed.evaluation")

BENCHMARK_KEYS = {"name": None, "mteb_benchmark": None, "mteb_tasks": [], "local_tasks": [], "exclude": [],
                  "languages": None, "eval_splits": None, "max_queries": None, "instructions": {}, "description": ""}


def benchmark_key(spec) -> str:
    """The name a benchmark's results are filed under (``metrics.json["eval"]``, ``eval/<key>/``): a name as given,
    a config's ``name``, a task list joined by commas."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, dict):
        return str(spec.get("name") or spec.get("mteb_benchmark") or "custom")
    if isinstance(spec, (list, tuple)):
        return ",".join(map(str, spec))
    return str(spec)


def shipped_benchmarks() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "benchmark").glob("*.yaml"))


def resolve_benchmark_config(spec, paths: dict | None = None) -> dict:
    """A plain dict with every benchmark key, from a config node, a dict, a shipped name
    (``conf/benchmark/<name>.yaml``), an mteb benchmark name, or a list / comma-separated string of mteb
    task names. ``paths`` overrides ``conf/paths/default.yaml`` keys used by shipped configs (data_dir, ...)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(spec, (DictConfig, ListConfig)):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, (list, tuple)):
        spec = {"name": "tasks", "mteb_tasks": [str(t) for t in spec]}
    elif isinstance(spec, str):
        path = CONF_DIR / "benchmark" / f"{spec}.yaml"
        if path.is_file():
            paths_cfg = OmegaConf.load(CONF_DIR / "paths" / "default.yaml")
            if paths:
                paths_cfg = OmegaConf.merge(paths_cfg, {k: str(v) for k, v in dict(paths).items() if v is not None})
            root = OmegaConf.create({"paths": paths_cfg, "benchmark": OmegaConf.load(path)})
            spec = OmegaConf.to_container(root.benchmark, resolve=True)
        elif "(" in spec:
            spec = {"name": spec, "mteb_benchmark": spec}
        else:
            names = [t.strip() for t in spec.split(",") if t.strip()]
            if not names:
                raise EvaluationConfigError("empty benchmark name")
            spec = {"name": "tasks", "mteb_tasks": names}
    if not isinstance(spec, dict):
        raise EvaluationConfigError(f"benchmark must be a name, a task list or a config dict, "
                                    f"got {type(spec).__name__}")
    unknown = set(spec) - set(BENCHMARK_KEYS)
    if unknown:
        raise EvaluationConfigError(f"unknown benchmark keys {sorted(unknown)}; known: {sorted(BENCHMARK_KEYS)}")
    out = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
           for k, v in BENCHMARK_KEYS.items()}
    out.update({k: v for k, v in spec.items() if v is not None or k in ("mteb_benchmark",)})
    out["name"] = out["name"] or out["mteb_benchmark"] or "custom"
    if not (out["mteb_benchmark"] or out["mteb_tasks"] or out["local_tasks"]):
        raise EvaluationConfigError(f"benchmark {out['name']!r} selects no task: set mteb_benchmark, mteb_tasks "
                                    f"or local_tasks (shipped benchmarks: {shipped_benchmarks()})")
    return out


def build_tasks(bench: dict, seed: int = 0) -> tuple[list, dict[str, str]]:
    """(mteb task objects in run order, each once; {local task name: its own instruction})."""
    tasks: list = []
    local_instructions: dict[str, str] = {}
    if bench["mteb_benchmark"] or bench["mteb_tasks"]:
        import mteb

        if bench["mteb_benchmark"]:
            try:
                tasks.extend(mteb.get_benchmark(bench["mteb_benchmark"]).tasks)
            except (KeyError, ValueError) as e:
                raise EvaluationConfigError(f"unknown mteb benchmark {bench['mteb_benchmark']!r}: {e}") from None
        if bench["mteb_tasks"]:
            try:
                tasks.extend(mteb.get_tasks(tasks=list(bench["mteb_tasks"]), languages=bench["languages"],
                                            eval_splits=bench["eval_splits"]))
            except KeyError as e:
                raise EvaluationConfigError(f"unknown mteb task in {list(bench['mteb_tasks'])}: {e}") from None
            found = {t.metadata.name for t in tasks}
            missing = [t for t in bench["mteb_tasks"] if t not in found]
            if missing:
                raise EvaluationConfigError(f"mteb has no task(s) {missing} (with languages={bench['languages']}, "
                                            f"eval_splits={bench['eval_splits']})")
    if bench["local_tasks"]:
        from reasoning_embed.evaluation.local_tasks import build_local_tasks, make_mteb_task

        for entry in bench["local_tasks"]:
            for data in build_local_tasks(entry, bench["max_queries"], seed):
                tasks.append(make_mteb_task(data))
                if data.instruction:
                    local_instructions[data.name] = data.instruction
    exclude = set(bench["exclude"] or [])
    out, seen = [], set()
    for task in tasks:
        name = task.metadata.name
        if name in exclude:
            continue
        if name in seen:
            log.warning("task %s is listed more than once; it is evaluated once", name)
            continue
        seen.add(name)
        out.append(task)
    if not out:
        raise EvaluationConfigError(f"benchmark {bench['name']!r}: every task is excluded")
    return out, local_instructions


# ---------------------------------------------------------------------------------------------------------
# Is the data here? (checked before anything runs, so an offline machine fails in seconds, not after a
# model load and a retry loop)
# ---------------------------------------------------------------------------------------------------------
def dataset_in_cache(repo: str, revision: str | None = None) -> bool:
    """Whether ``repo`` (a hub dataset id) has a snapshot in the hub cache or prepared data in the datasets
    cache. Lenient about the revision: a snapshot of another revision counts (mteb then reports a real
    load error, as a failed task), so this check never blocks a run that could work."""
    snaps = hub_cache_dir() / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    if snaps.is_dir() and any(snaps.iterdir()):  # any revision (see above), so not cached_snapshot
        return True
    try:
        from datasets.naming import camelcase_to_snakecase
    except ImportError:  # pragma: no cover
        def camelcase_to_snakecase(x):
            return x.lower()
    parts = repo.split("/")
    names = {"___".join(parts[:-1] + [p]).lower() for p in (parts[-1], camelcase_to_snakecase(parts[-1]))}
    root = datasets_cache_dir()
    return root.is_dir() and any(d.name.lower() in names for d in root.iterdir() if d.is_dir())


def _hub_datasets(task) -> list[tuple[str, str | None]]:
    from reasoning_embed.evaluation.local_tasks import is_local_task

    if is_local_task(task):
        return []
    subtasks = getattr(task.metadata, "tasks", None)
    if subtasks:  # an aggregate task: its parts hold the data
        return [d for t in subtasks for d in _hub_datasets(t)]
    ds = task.metadata.dataset or {}
    path = str(ds.get("path") or "")
    if path.count("/") != 1 or path.startswith((".", "/", "~")) or path.startswith("local/"):
        return []
    return [(path, ds.get("revision"))]


def check_data_available(tasks, benchmark_name: str, reachable=None) -> None:
    """Raise BenchmarkDataMissingError naming every missing dataset when the hub is not usable."""
    missing: dict[tuple[str, str | None], list[str]] = {}
    for task in tasks:
        for repo, rev in _hub_datasets(task):
            if not dataset_in_cache(repo, rev):
                missing.setdefault((repo, rev), []).append(task.metadata.name)
    if not missing:
        return
    why = offline_reason()
    if why is None:
        if reachable is None:
            reachable = hub_reachable
        if reachable():
            log.info("%d dataset(s) not cached yet; mteb will download them", len(missing))
            return
        why = "huggingface.co is unreachable"
    lines = []
    for (repo, rev), names in missing.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{repo}" + (f" (revision {rev})" if rev else "") + f" needed by {shown}")
        log.error("missing dataset: %s", lines[-1])
    if len(lines) > 5:
        lines = lines[:5] + [f"and {len(lines) - 5} more (each logged above as 'missing dataset')"]
    first_repo, first_rev = next(iter(missing))
    rev_flag = f" --revision {first_rev}" if first_rev else ""
    raise BenchmarkDataMissingError(
        f"benchmark {benchmark_name!r}: {len(missing)} dataset(s) not in the local cache and {why}: "
        + "; ".join(lines)
        + f". Looked in {hub_cache_dir()} and {datasets_cache_dir()}. To fetch, on a machine with network run "
        f"`python -m reasoning_embed.evaluate benchmark={benchmark_name} prefetch=true` (loads every task's data "
        f"into the Hugging Face cache) or `hf download {first_repo} --repo-type dataset{rev_flag}` for each "
        f"dataset, then copy that cache here (or point HF_HOME at it); or run where the hub is reachable "
        f"without HF_HUB_OFFLINE/HF_DATASETS_OFFLINE.")


def prefetch(tasks) -> list[str]:
    """Load (and so download and cache) every hub task's data; returns the task names fetched."""
    from reasoning_embed.evaluation.local_tasks import is_local_task

    done = []
    for task in tasks:
        if is_local_task(task):
            continue
        log.info("prefetching %s", task.metadata.name)
        task.load_data()
        task.unload_data()
        done.append(task.metadata.name)
    return done
