"""Small helpers shared by the Hydra entry points."""

from __future__ import annotations

import logging
import os
import sys
from functools import wraps

log = logging.getLogger("reasoning_embed")


def quiet_environment() -> None:
    """Defaults that keep a run offline-safe and readable; a user's own settings win."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import warnings

    # Lightning prints ModelCheckpoint's docstring as a warning under manual optimisation; not actionable.
    warnings.filterwarnings("ignore", message=r"(?s).*saved_models")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*litlogger")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "could not load AVX512/AVX2" is how it probes
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # "Building index from tokens" at DEBUG on every baseline
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_lightning_noise)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


# Lightning's device inventory on every run ("GPU available: False, used: False", ...): the device in use is
# the run's accelerator setting; a GPU left unused still gets Lightning's own "available but not used" warning.
_DEVICE_INVENTORY = ("GPU available:", "TPU available:", "HPU available:")


def _drop_lightning_noise(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if record.levelno <= logging.INFO and message.startswith(_DEVICE_INVENTORY):
        return False
    return "Tip:" not in message  # advertisements for other products, not about this run


def one_console_handler() -> None:
    """Lightning gives its ``lightning`` logger a console handler of its own at import, and its records also
    reach the root logger's console handler (Hydra's): every line twice. With a root handler present, keep that
    one (it also writes the run's log file)."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for h in list(lightning_logger.handlers):
            if type(h) is logging.StreamHandler:
                lightning_logger.removeHandler(h)


def _log_to_files_only(message: str) -> None:
    """Record ``message`` in the run's log file(s) without printing it on the console a second time."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler):
                h.handle(record)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra
        return False


def user_errors_exit(fn):
    """Print a ReasoningEmbedError as one line and exit 2, instead of a long traceback."""
    from reasoning_embed.errors import ReasoningEmbedError

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # hydra.utils.instantiate wraps errors: look down the cause chain
            cause = e
            while cause is not None and not isinstance(cause, ReasoningEmbedError):
                cause = cause.__cause__
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            _log_to_files_only(str(cause))
            if in_multirun():
                raise  # Hydra records the failed job and runs the others; SystemExit would end the sweep
            sys.exit(2)

    return wrapper


def instantiate_dict(cfg) -> list:
    """Instantiate every entry of a config dict that has a ``_target_`` (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def check_override_keys(config_name: str, argv: list[str]) -> None:
    """Hydra answers an override of a key that does not exist with "To append to your config use +key=value":
    for a typo (``trainer.max_step=3``) that adds a key nothing reads. Name the closest existing key instead
    and exit 2. Composes the config once when there are plain overrides (a fraction of a second)."""
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra."))]
    if not overrides:
        return
    import difflib
    import re

    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from reasoning_embed import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            compose(config_name, overrides=overrides)
            return
        except ConfigCompositionException as e:
            m = re.search(r"Could not override '([^']+)'", str(e))
        except Exception:  # noqa: BLE001 - sweeps and other syntax: Hydra itself reports those
            return
        if not m:
            return
        key = m.group(1)
        others = [o for o in overrides if not o.startswith(key + "=")]
        try:
            cfg = compose(config_name, overrides=others)
        except Exception:  # noqa: BLE001
            return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = list(node.keys()) if OmegaConf.is_dict(node) else []
    if leaf in keys:  # the key exists: a dict given whole is merged into it, and its new names are refused
        print(f"error: {key} is a key of the {config_name} config, but its value could not be merged into it; "
              f"give a dict's entries one by one ({key}.NAME=VALUE, +{key}.NAME=VALUE for a new name)",
              file=sys.stderr)
        sys.exit(2)
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = (f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close
            else f"{parent or 'the top level'} has: {', '.join(map(str, keys[:20]))}")
    print(f"error: {key} is not a key of the {config_name} config; {hint} (to add a new key on purpose, prefix it "
          f"with +, which only helps if some code reads it)", file=sys.stderr)
    sys.exit(2)


def results_dir(cfg) -> str:
    """Where an entry point writes its results: ``out=`` when the command line gives it, whatever
    ``hydra.run.dir`` says (sweeps and scripts set both); otherwise Hydra's run directory."""
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides.task
    if any(o.split("=", 1)[0].lstrip("+~") == "out" for o in overrides) and cfg.get("out"):
        return str(cfg.out)
    return HydraConfig.get().runtime.output_dir
