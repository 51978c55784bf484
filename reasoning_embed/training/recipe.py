"""The paper's contrastive recipe as values, and the line that says where a run departs from it.

The defaults of ``conf/train.yaml`` are this recipe; an experiment or an override that changes one of these
values is named at start (and in ``metrics.json``), so a toy setting cannot pass for the paper's.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

# config key -> the paper's value (what changes the trained model; memory savers such as gradient checkpointing
# or gradient caching are not listed: they leave the gradient unchanged).
PAPER_RECIPE: dict[str, object] = {
    "model.optimizer.lr": 2.0e-5,
    "model.optimizer.weight_decay": 0.05,
    "model.warmup_ratio": 0.03,
    "model.max_grad_norm": 1.0,
    "model.temperature": 0.02,
    "model.embedding_lr_scale": 1.0,
    "trainer.max_epochs": 1,
    "trainer.max_steps": -1,
    "data.num_negatives": 3,
    "data.file_weights": None,  # each source in proportion to its rows
    "encoder.attention": "bidirectional",
    "encoder.pooling": "mean",
    "encoder.normalize": True,
    "encoder.query_template": "Instruct: {instruction}\nQuery: ",
    "encoder.add_special_tokens": False,
    "encoder.max_query_length": 512,
    "encoder.max_passage_length": 512,
    "finetune.mode": "full",
}
PAPER_PRECISION = "bf16-mixed"
PAPER_GLOBAL_BATCH = 2048


def recipe_differences(cfg: DictConfig, world_size: int = 1) -> dict[str, tuple[object, object]]:
    """``{key: (this run's value, the paper's value)}`` for every recipe value this run changes."""
    diffs = {}
    for key, paper in PAPER_RECIPE.items():
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):  # a dict such as data.file_weights, written to metrics.json as is
            value = OmegaConf.to_container(value, resolve=True)
        if value != paper:
            diffs[key] = (value, paper)
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=None))
    if precision != PAPER_PRECISION:
        diffs["trainer.precision"] = (precision, PAPER_PRECISION)
    per_device = OmegaConf.select(cfg, "data.batch_size", default=None)
    if per_device and per_device * world_size != PAPER_GLOBAL_BATCH:
        diffs["global batch"] = (per_device * world_size, PAPER_GLOBAL_BATCH)
    return diffs


def recipe_line(diffs: dict[str, tuple[object, object]]) -> str:
    """The start-of-run line: 'recipe vs the paper: ...' naming each changed value beside the paper's."""
    if not diffs:
        return "recipe vs the paper: unchanged"
    parts = [f"{key}={value!r} (paper {paper!r})" for key, (value, paper) in diffs.items()]
    return "recipe vs the paper: differs in " + ", ".join(parts)


def export_facts(cfg: DictConfig, metrics: dict, datamodule=None) -> tuple[str | None, dict]:
    """(query instruction, model-card facts) for a run's export: the training data's most frequent
    instruction fills the export's ``query`` prompt; the card names backbone, recipe, data and metrics."""
    from collections import Counter

    rows = getattr(getattr(datamodule, "dataset", None), "rows", None) or []
    counts = Counter(r.instruction for r in rows if r.instruction)
    instruction = counts.most_common(1)[0][0] if counts else None
    diffs = metrics.get("recipe_differences") or {}
    card = {
        "backbone": {k: OmegaConf.select(cfg, f"backbone.{k}") for k in ("name", "path", "revision")},
        "finetune": OmegaConf.to_container(cfg.finetune, resolve=True) if "finetune" in cfg else None,
        "recipe": {k.split(".")[-1]: OmegaConf.select(cfg, k, default=None) for k in PAPER_RECIPE},
        "recipe differences from the paper": {k: f"{v['run']} (paper {v['paper']})" for k, v in diffs.items()} or "none",
        "training data": str(getattr(datamodule, "train_path", None) or OmegaConf.select(cfg, "data.train")),
        "training rows": len(rows),
        "instructions (most frequent first)": [i for i, _ in counts.most_common(5)],
        "steps": metrics.get("steps"), "seed": OmegaConf.select(cfg, "seed"),
        "held-out metrics (before -> after training)": {
            "before": metrics.get("initial_val") or None, "after": metrics.get("final_val") or None},
    }
    return instruction, card
