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
from omegaconf import DictConfig, OmegaConf, open_dict

from reasoning_embed.utils.fmt import fmt_number
from reasoning_embed.utils.hydra_utils import in_multirun, instantiate_dict, quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.train")


def _check_benchmarks(cfg) -> None:
    """Every ``eval.benchmark`` resolves and its data is here: checked before the first training step, so a
    missing dataset fails in seconds instead of turning a finished run into a failed one."""
    benchmarks = OmegaConf.select(cfg, "eval.benchmark")
    if not benchmarks:
        return
    from reasoning_embed.evaluation.benchmarks import build_tasks, check_data_available, resolve_benchmark_config

    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    for bench in [benchmarks] if isinstance(benchmarks, str) else list(benchmarks):
        spec = resolve_benchmark_config(bench, paths)
        check_data_available(build_tasks(spec, cfg.seed)[0], spec["name"])


def _logger_run_id(cfg, output_dir: Path) -> None:
    """One W&B run per run directory: the id is drawn once, kept in the run dir, and reused on resume."""
    if not OmegaConf.select(cfg, "logger.wandb._target_"):
        return
    import json
    import uuid

    from reasoning_embed.utils.io import atomic_write_json

    path = output_dir / "logger_ids.json"
    ids = json.loads(path.read_text()) if path.is_file() else {}
    if "wandb" not in ids:
        ids["wandb"] = OmegaConf.select(cfg, "logger.wandb.id") or uuid.uuid4().hex[:8]
        atomic_write_json(path, ids)
    with open_dict(cfg):
        cfg.logger.wandb.id = ids["wandb"]  # Lightning's logger resumes an existing id ("allow")


def _evaluate_at_end(cfg, encoder, output_dir: Path, loggers, step: int) -> dict:
    """``eval.benchmark`` (a name or a list): scores land in metrics.json["eval"] and the loggers."""
    benchmarks = OmegaConf.select(cfg, "eval.benchmark")
    if not benchmarks:
        return {}
    from reasoning_embed.evaluation.benchmarks import benchmark_key
    from reasoning_embed.evaluation.runner import evaluate_model

    benchmarks = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
    results = {}
    for spec in benchmarks:
        bench = benchmark_key(spec)
        summary = evaluate_model(encoder, spec, output_dir / "eval" / bench,
                                 allow_failures=bool(OmegaConf.select(cfg, "eval.allow_failures")),
                                 paths=OmegaConf.to_container(cfg.paths, resolve=True), seed=cfg.seed)
        results[bench] = summary
        flat = {f"eval/{bench}/Mean(Task)": summary.get("mean_task"), f"eval/{bench}/Mean(Type)": summary.get("mean_type")}
        flat.update({f"eval/{bench}/{t['task']}": t["score"] for t in summary.get("tasks", []) if t.get("score") is not None})
        for lg in loggers:
            lg.log_metrics({k: v for k, v in flat.items() if v is not None}, step=step)
        log.info("%s: Mean(Task) %s, Mean(Type) %s (x100)", bench, _num(summary.get("mean_task")),
                 _num(summary.get("mean_type")))
    return results


def train(cfg: DictConfig) -> dict:
    """Fit, validate, export. Returns the metrics written to ``metrics.json``.

    The run directory is locked for the whole run (one run per directory); inputs are checked before any
    model is built; ``metrics.json`` is written as soon as training ends and updated after each later stage.
    """
    from reasoning_embed.utils.run_lock import run_dir_held

    output_dir = Path(cfg.paths.output_dir)
    with run_dir_held(output_dir, notice=log.warning):
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> dict:
    from reasoning_embed.training.preflight import check_callback_inputs, resolve_checkpoint, validate_data_files

    # Cheap checks first, before torch is even imported: a bad file or checkpoint fails in seconds.
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir)
    preread = validate_data_files(cfg.data)
    check_callback_inputs(cfg.get("callbacks"))

    import lightning as L
    from hydra.utils import instantiate

    from reasoning_embed.training.callbacks import GracefulInterrupt
    from reasoning_embed.training.hrsa_callback import HRSACallback
    from reasoning_embed.utils.hydra_utils import one_console_handler

    one_console_handler()
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.preread = preread
    datamodule.prepare_data()
    _check_benchmarks(cfg)  # the end-of-training evaluation's data: here now, not after hours of training
    encoder = instantiate(cfg.encoder)
    datamodule.tokenizer = encoder.tokenizer
    module = instantiate(cfg.model, encoder=encoder)
    interrupt = GracefulInterrupt(str(output_dir / "checkpoints" / "last.ckpt"))
    callbacks = (instantiate_dict(cfg.get("callbacks")) + instantiate_dict(cfg.get("extra_callbacks"))
                 + [interrupt])
    _logger_run_id(cfg, output_dir)
    loggers = instantiate_dict(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    from reasoning_embed.training.recipe import recipe_differences, recipe_line

    recipe_diffs = recipe_differences(cfg, trainer.world_size)
    log.info(recipe_line(recipe_diffs))

    has_val = bool(datamodule.val_path)  # data.val=null: the prepared offline corpus' val split
    if has_val and cfg.get("validate_before_training") and ckpt_path is None:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        module.initial_val = dict(module.last_val)  # kept in every checkpoint: a resumed run still has it
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's SIGTERMException after a handled signal is the interruption itself
        if interrupt.signum is None:
            raise
    if interrupt.signum is not None:
        interrupt.save_after_fit(trainer)  # no-op when the callback already saved at the step's end
        raise RunInterrupted(interrupt.signum, interrupt.saved_step, interrupt.ckpt_path)
    train_seconds = time.perf_counter() - start
    # A checkpoint callback may already have saved this very step mid-epoch (the resumable state); saving
    # again after fit would record a finished epoch, and resuming from it would train no further.
    saved = {getattr(cb, "_last_global_step_saved", None) for cb in trainer.callbacks}
    if trainer.global_step not in saved:
        trainer.save_checkpoint(output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    hrsa = [cb for cb in trainer.callbacks if isinstance(cb, HRSACallback)]
    metrics = {
        "status": "trained",
        "backbone": cfg.backbone.name,
        "backbone_path": getattr(encoder, "source_path", None),  # the report compares the backbones trained from
        "finetune": cfg.finetune.mode,
        "seed": cfg.seed,
        "steps": int(trainer.global_step),
        "tokens_per_s": module.throughput(),
        "train_seconds": train_seconds,
        "hrsa_callback_seconds": sum(cb.seconds for cb in hrsa),
        "final_loss": module.last_loss,
        "initial_val": dict(module.initial_val),
        "final_val": dict(module.last_val) if module.last_val_step == trainer.global_step else {},
        "data": datamodule.data_report,
        "recipe_differences": {k: {"run": v, "paper": p} for k, (v, p) in recipe_diffs.items()},
    }
    if hrsa and hrsa[0].records:
        metrics["hrsa_final"] = hrsa[0].records[-1]
    write = _metrics_writer(output_dir, metrics, trainer.is_global_zero)
    write()  # results first: whatever fails later, the trained run's numbers are on disk
    if has_val and module.last_val_step != trainer.global_step:  # Lightning may just have validated this step
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics["final_val"] = dict(module.last_val)
    metrics["embedding_spread"] = dict(module.last_spread)
    metrics["collapsed"] = bool(module.collapsed)
    write()
    from reasoning_embed.training.strategies import full_encoder

    encoder = full_encoder(module.encoder)  # FSDP: every rank joins the gathering; rank 0 gets a plain copy
    if trainer.is_global_zero:
        if cfg.get("export", True):
            from reasoning_embed.models.export import export_encoder
            from reasoning_embed.training.recipe import export_facts

            instruction, card = export_facts(cfg, metrics, datamodule)
            export_encoder(encoder, output_dir / "model", instruction=instruction, card=card)
            metrics["export"] = str(output_dir / "model")
            write()
        metrics["baselines"] = _baselines(cfg, module, datamodule)
        write()
        metrics["eval"] = _evaluate_at_end(cfg, encoder, output_dir, loggers, trainer.global_step)
        metrics["status"] = "complete"
        write()
        for stale in ("interrupted.json", "failed.json"):  # an interrupted or failed run, now finished
            (output_dir / stale).unlink(missing_ok=True)
        _final_lines(metrics, output_dir)
    return metrics


def _baselines(cfg, module, datamodule) -> dict:
    """``baselines`` (bm25, minilm) on the held-out sets, with the keys of ``final_val``."""
    names = list(cfg.get("baselines") or [])
    val_sets = module.val_sets or getattr(datamodule, "val_sets", None) or []
    if not names or not val_sets:
        return {}
    from reasoning_embed.evaluation.baselines import baseline_metrics

    return baseline_metrics(val_sets, names, cache_dir=Path(cfg.paths.data_dir) / "baselines")


def _metrics_writer(output_dir: Path, metrics: dict, is_rank_zero: bool):
    from reasoning_embed.utils.io import atomic_write_json

    def write():
        if is_rank_zero:
            atomic_write_json(output_dir / "metrics.json", metrics)

    return write


def _num(value) -> str:
    """The one number format of the end-of-run lines: 4 decimals, ``n/a`` when missing or not finite."""
    return fmt_number(value, ".4f")


def _final_lines(metrics: dict, output_dir: Path) -> None:
    from reasoning_embed.training.spread import retrieval_got_worse

    initial, final = metrics["initial_val"], metrics["final_val"]
    before, after = initial.get("val/ndcg@10"), final.get("val/ndcg@10")
    if initial:
        log.info("held-out nDCG@10: untrained %s -> trained %s", _num(before), _num(after))
    for name, scores in metrics.get("baselines", {}).items():
        log.info("held-out nDCG@10 of the %s baseline: %s", name, _num(scores.get("val/ndcg@10")))
    if retrieval_got_worse(before, after):
        log.warning("training made held-out retrieval WORSE (nDCG@10 %s -> %s); the embeddings' mean pairwise "
                    "cosine went %s -> %s (they are bunching together): this model is not usable; lower the "
                    "learning rate or raise the temperature", _num(before), _num(after),
                    _num(initial.get("val/spread/mean_cosine")), _num(final.get("val/spread/mean_cosine")))
    if metrics.get("collapsed"):
        spread = metrics.get("embedding_spread", {})
        log.warning("the trained embeddings COLLAPSED (mean pairwise cosine %s, effective rank %s): retrieval "
                    "with this model is meaningless; lower the learning rate or raise the temperature",
                    _num(spread.get("mean_cosine")), _num(spread.get("effective_rank")))
    log.info("run directory: %s", output_dir)


class RunInterrupted(SystemExit):
    """SIGINT/SIGTERM stopped training after a resumable checkpoint: an interruption, not a failure."""

    def __init__(self, signum: int, step: int | None, checkpoint: str | None):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def _resume_command(cfg: DictConfig, has_checkpoint: bool) -> str:
    """The command that continues this run in its own directory (the original overrides, verbatim)."""
    import shlex
    import sys

    overrides = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # train() called without Hydra
        pass
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.run.dir=", "ckpt_path="))]
    keep.append(f"hydra.run.dir={Path(cfg.paths.output_dir).resolve()}")
    if has_checkpoint:
        keep.append("ckpt_path=last")
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "reasoning_embed.train", *keep])


def _record_interruption(cfg: DictConfig, signum: int, step: int | None) -> str:
    """interrupted.json: which signal, at which step, and the exact command that resumes the run."""
    import signal

    from reasoning_embed.utils.io import atomic_write_json

    output_dir = Path(cfg.paths.output_dir)
    has_ckpt = (output_dir / "checkpoints" / "last.ckpt").exists()
    command = _resume_command(cfg, has_ckpt)
    atomic_write_json(output_dir / "interrupted.json", {
        "signal": signal.Signals(signum).name, "step": step,
        "checkpoint": str(output_dir / "checkpoints" / "last.ckpt") if has_ckpt else None,
        "resume": command, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return command


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


class _Terminated(KeyboardInterrupt):
    signum = 15  # SIGTERM


def _sigterm_as_interrupt(signum, frame):
    raise _Terminated  # outside training (validation, export, evaluation): stop like Ctrl-C does


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    import signal
    import sys

    quiet_environment()
    _sweep_context()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        metrics = train(cfg)
    except RunInterrupted as e:  # a resumable checkpoint is saved: record how to continue, not a failure
        command = _record_interruption(cfg, e.signum, e.step)
        print(f"interrupted at step {e.step}; checkpoint {e.checkpoint}. Resume with:\n  {command}", file=sys.stderr)
        raise
    except KeyboardInterrupt as e:  # before or after training: nothing to lose, nothing to record as a failure
        signum = getattr(e, "signum", signal.SIGINT)
        command = _record_interruption(cfg, signum, None)
        print(f"interrupted. Resume with:\n  {command}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
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
    import sys

    from reasoning_embed.utils.hydra_utils import check_override_keys

    check_override_keys("train", sys.argv[1:])
    main()
