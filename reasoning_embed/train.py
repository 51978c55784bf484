"""Train an embedding model with the contrastive recipe: ``python -m reasoning_embed.train``.

Writes to the Hydra run dir: ``.hydra/``, ``checkpoints/last.ckpt``, ``model/`` (Hugging Face +
sentence-transformers directory), ``metrics.json`` (held-out retrieval before and after training,
steps, tokens/s) and ``data_report.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.utils.hydra_utils import in_multirun, instantiate_dict, quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.train")


def _resolve_ckpt(ckpt_path, output_dir: Path):
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            from reasoning_embed.errors import ReasoningEmbedError

            raise ReasoningEmbedError(f"ckpt_path=last but {last} does not exist; set hydra.run.dir to the run "
                                      f"you want to resume, or pass ckpt_path=/path/to/file.ckpt")
        return str(last)
    return ckpt_path


def _evaluate_at_end(cfg, encoder, output_dir: Path, loggers, step: int) -> dict:
    """``eval.benchmark`` (a name or a list): scores land in metrics.json["eval"] and the loggers."""
    benchmarks = OmegaConf.select(cfg, "eval.benchmark")
    if not benchmarks:
        return {}
    from reasoning_embed.evaluation.runner import evaluate_model

    benchmarks = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
    results = {}
    for bench in benchmarks:
        summary = evaluate_model(encoder, bench, output_dir / "eval" / str(bench),
                                 allow_failures=bool(OmegaConf.select(cfg, "eval.allow_failures")),
                                 paths=OmegaConf.to_container(cfg.paths, resolve=True), seed=cfg.seed)
        results[str(bench)] = summary
        flat = {f"eval/{bench}/Mean(Task)": summary.get("mean_task"), f"eval/{bench}/Mean(Type)": summary.get("mean_type")}
        flat.update({f"eval/{bench}/{t['task']}": t["score"] for t in summary.get("tasks", []) if t.get("score") is not None})
        for lg in loggers:
            lg.log_metrics({k: v for k, v in flat.items() if v is not None}, step=step)
        log.info("%s: Mean(Task) %s, Mean(Type) %s", bench, summary.get("mean_task"), summary.get("mean_type"))
    return results


def train(cfg: DictConfig) -> dict:
    """Fit, validate, export. Returns the metrics written to ``metrics.json``."""
    import lightning as L
    from hydra.utils import instantiate

    from reasoning_embed.training.hrsa_callback import HRSACallback
    from reasoning_embed.utils.io import atomic_write_json

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    encoder = instantiate(cfg.encoder)
    datamodule.tokenizer = encoder.tokenizer
    module = instantiate(cfg.model, encoder=encoder)
    callbacks = instantiate_dict(cfg.get("callbacks")) + instantiate_dict(cfg.get("extra_callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    from reasoning_embed.training.recipe import recipe_differences, recipe_line

    recipe_diffs = recipe_differences(cfg, trainer.world_size)
    log.info(recipe_line(recipe_diffs))

    ckpt_path = _resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    initial = {}
    has_val = bool(datamodule.val_path)  # data.val=null: the prepared offline corpus' val split
    if has_val and cfg.get("validate_before_training") and ckpt_path is None:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        initial = dict(module.last_val)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - start
    # A checkpoint callback may already have saved this very step mid-epoch (the resumable state); saving
    # again after fit would record a finished epoch, and resuming from it would train no further.
    saved = {getattr(cb, "_last_global_step_saved", None) for cb in trainer.callbacks}
    if trainer.global_step not in saved:
        trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    if has_val and module.last_val_step != trainer.global_step:  # Lightning may just have validated this step
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final = dict(module.last_val)

    metrics = {
        "backbone": cfg.backbone.name,
        "finetune": cfg.finetune.mode,
        "seed": cfg.seed,
        "steps": int(trainer.global_step),
        "tokens_per_s": module.throughput(),
        "train_seconds": train_seconds,
        "hrsa_callback_seconds": sum(cb.seconds for cb in trainer.callbacks if isinstance(cb, HRSACallback)),
        "final_loss": module.last_loss,
        "initial_val": initial,
        "final_val": final,
        "data": datamodule.data_report,
        "recipe_differences": {k: {"run": v, "paper": p} for k, (v, p) in recipe_diffs.items()},
    }
    from reasoning_embed.training.strategies import full_encoder

    encoder = full_encoder(module.encoder)  # FSDP: every rank joins the gathering; rank 0 gets a plain copy
    if trainer.is_global_zero:
        if cfg.get("export", True):
            from reasoning_embed.models.export import export_encoder
            from reasoning_embed.training.recipe import export_facts

            instruction, card = export_facts(cfg, metrics, datamodule)
            export_encoder(encoder, output_dir / "model", instruction=instruction, card=card)
        metrics["eval"] = _evaluate_at_end(cfg, encoder, output_dir, loggers, trainer.global_step)
        atomic_write_json(output_dir / "metrics.json", metrics)
        if initial:
            log.info("held-out nDCG@10: untrained %.4f -> trained %.4f", initial.get("val/ndcg@10", float("nan")),
                     final.get("val/ndcg@10", float("nan")))
        log.info("run directory: %s", output_dir)
    return metrics


def _sweep_context() -> None:
    """In a multirun, group the W&B runs by sweep (unless WANDB_RUN_GROUP is set)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    if in_multirun():
        os.environ.setdefault("WANDB_RUN_GROUP", Path(HydraConfig.get().sweep.dir).name)


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """A failed job leaves failed.json in its run dir, so the sweep report can list it."""
    import traceback

    from reasoning_embed.utils.io import atomic_write_json

    atomic_write_json(Path(cfg.paths.output_dir) / "failed.json", {
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error))[-5000:],
    })


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    quiet_environment()
    _sweep_context()
    try:
        metrics = train(cfg)
    except BaseException as e:  # Hydra's multirun goes on with the other jobs; the report lists this one
        _record_failure(cfg, e)
        raise
    finally:
        try:
            import wandb

            wandb.finish()  # so multirun jobs do not merge into one W&B run
        except ImportError:
            pass
    return metrics["final_val"].get("val/ndcg@10")


if __name__ == "__main__":
    main()
