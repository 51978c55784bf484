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
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


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
            log.error("%s", cause)
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
