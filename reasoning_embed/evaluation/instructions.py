"""Per-task query instructions: a table (E5/GritLM style) with fallbacks, looked up by mteb task name.

Resolution order for a task ``name`` of type ``type``:

1. ``tasks[name]`` (exact, then case-insensitive, then with a ``.vN`` version suffix and/or a
   ``HardNegatives`` suffix removed, so ``TwentyNewsgroupsClustering.v2`` finds the E5 entry);
2. ``prefixes``: the first prefix the name starts with (E5 uses one instruction for all CQADupstack tasks);
3. ``by_type[type]`` (E5 uses one instruction per type for STS, Summarization and BitextMining);
4. ``default``.

The instruction is formatted by the encoder's query template (``"Instruct: {instruction}\\nQuery: "``) and
applied to queries (and, when ``symmetric_both_sides``, to both sides of symmetric tasks: STS,
classification, clustering, pair classification, bitext mining); documents never get one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from reasoning_embed import CONF_DIR  # noqa: E402  (re-exported for older imports)
from reasoning_embed.models.export import DEFAULT_INSTRUCTION  # noqa: F401 - defined once, in the lower layer

_VERSION = re.compile(r"\.v\d+$")


def _variants(name: str) -> list[str]:
    out = [name]
    base = _VERSION.sub("", name)
    for cand in (base, base.removesuffix("HardNegatives"), name.removesuffix("HardNegatives")):
        if cand and cand not in out:
            out.append(cand)
    return out


@dataclass(frozen=True)
class InstructionTable:
    default: str = DEFAULT_INSTRUCTION
    tasks: dict[str, str] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)
    by_type: dict[str, str] = field(default_factory=dict)
    symmetric_both_sides: bool = True
    name: str = "custom"

    def resolve(self, task_name: str, task_type: str | None = None) -> tuple[str, str]:
        """(instruction, source) where source says which rule matched: task, prefix:..., type:..., default."""
        lower = {k.lower(): v for k, v in self.tasks.items()}
        for cand in _variants(task_name):
            if cand in self.tasks:
                return self.tasks[cand], "task" if cand == task_name else f"task:{cand}"
            if cand.lower() in lower:
                return lower[cand.lower()], f"task:{cand.lower()}"
        for prefix, instruction in self.prefixes.items():
            if task_name.lower().startswith(prefix.lower()):
                return instruction, f"prefix:{prefix}"
        if task_type and task_type in self.by_type:
            return self.by_type[task_type], f"type:{task_type}"
        return self.default, "default"

    def with_tasks(self, tasks: dict[str, str], overwrite: bool = True) -> InstructionTable:
        """A copy with more per-task entries (``overwrite=False`` keeps entries the table already has)."""
        merged = dict(self.tasks)
        for k, v in (tasks or {}).items():
            if overwrite or k not in merged:
                merged[k] = v
        return replace(self, tasks=merged)

    def to_dict(self) -> dict:
        return {"name": self.name, "default": self.default, "symmetric_both_sides": self.symmetric_both_sides,
                "by_type": dict(self.by_type), "prefixes": dict(self.prefixes), "tasks": dict(self.tasks)}


def load_instruction_table(spec=None) -> InstructionTable:
    """``spec``: None (the shipped ``e5`` table), a name under ``conf/instructions/``, a YAML path, a dict
    (or DictConfig) with the table's keys, or an InstructionTable."""
    if isinstance(spec, InstructionTable):
        return spec
    from omegaconf import DictConfig, OmegaConf

    name = "custom"
    if spec is None:
        spec = "e5"
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.suffix:
            path = CONF_DIR / "instructions" / f"{spec}.yaml"
        if not path.is_file():
            from reasoning_embed.evaluation.errors import EvaluationConfigError

            shipped = sorted(p.stem for p in (CONF_DIR / "instructions").glob("*.yaml"))
            raise EvaluationConfigError(f"instruction table {str(spec)!r} not found "
                                        f"(shipped: {shipped}, or a .yaml path)")
        name = path.stem
        spec = OmegaConf.load(path)
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    spec = dict(spec)
    return InstructionTable(
        default=spec.get("default") or DEFAULT_INSTRUCTION,
        tasks={str(k): str(v) for k, v in (spec.get("tasks") or {}).items()},
        prefixes={str(k): str(v) for k, v in (spec.get("prefixes") or {}).items()},
        by_type={str(k): str(v) for k, v in (spec.get("by_type") or {}).items()},
        symmetric_both_sides=bool(spec.get("symmetric_both_sides", True)),
        name=str(spec.get("name") or name),
    )
