"""Checks a training run makes before it builds a model: every input it will need later is here and readable.

Bad input fails in seconds with one line (file, line, what was expected), not after model loading or, worse,
after hours of training. The file checks import nothing heavy (no torch), so they run first.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from reasoning_embed.errors import ReasoningEmbedError

log = logging.getLogger(__name__)


class CheckpointError(ReasoningEmbedError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


def resolve_checkpoint(ckpt_path, output_dir: Path) -> str | None:
    """``ckpt_path``: None, ``last`` (the run dir's checkpoints/last.ckpt) or a path; the file must be readable."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise CheckpointError(f"ckpt_path=last but {path} does not exist; set hydra.run.dir to the run you want "
                                  f"to resume, or pass ckpt_path=/path/to/file.ckpt")
    else:
        path = Path(ckpt_path)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
    check_checkpoint(path)
    return str(path)


def check_checkpoint(path: Path) -> None:
    """A torch checkpoint is a zip archive whose directory sits at its end: a truncated file (a run killed while
    saving, a partial copy) has none. A directory (a sharded FSDP checkpoint) is left to its loader."""
    path = Path(path)
    if path.is_dir():
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} ({size:,} bytes) is unreadable: {e}; it is probably truncated "
                              f"(killed while saving, or copied partially). Resume from an intact checkpoint "
                              f"(ckpt_path=/path/to/file.ckpt) or start the run afresh") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"checkpoint {path} is a zip archive but not a torch checkpoint (no data.pkl)")


def validate_data_files(data_cfg) -> dict[str, tuple]:
    """Read and validate every training and held-out file now (before any model is built).

    Returns ``{path: (rows, report)}`` for the data module to reuse, so nothing is parsed twice. Files of the
    offline corpus that are not built yet are skipped: the data module builds them, then reads them.
    """
    from reasoning_embed.data.jsonl import data_files, read_jsonl

    out: dict[str, tuple] = {}
    built_later = bool(data_cfg.get("offline_corpus"))
    for key in ("train", "val"):
        spec = data_cfg.get(key)
        if not spec or (built_later and not Path(spec).exists()):
            continue
        for path in data_files(spec):
            out[str(path)] = read_jsonl(path, data_cfg.get("bad_rows", "error"))
    return out


def check_callback_inputs(callbacks_cfg) -> None:
    """The HRSA callback's reference run / model and probe file exist (they are read at the first step)."""
    hrsa = (callbacks_cfg or {}).get("hrsa") or {}
    if not hrsa or not hrsa.get("enabled", True):
        return
    if hrsa.get("reference_run") and not Path(hrsa["reference_run"]).is_dir():
        raise ReasoningEmbedError(f"callbacks.hrsa.reference_run={hrsa['reference_run']}: no such run directory")
    if hrsa.get("probe_file") and not Path(hrsa["probe_file"]).is_file():
        raise ReasoningEmbedError(f"callbacks.hrsa.probe_file={hrsa['probe_file']}: no such file")
    ref = hrsa.get("reference_model")
    if ref and not Path(str(ref)).is_dir():
        from reasoning_embed.models.loading import MINILM_ALIASES, _is_config_name, resolve_spec

        if str(ref).lower() not in MINILM_ALIASES and not _is_config_name(str(ref)):  # those are built on use
            resolve_spec(str(ref))  # a missing path, or a hub id neither cached nor reachable: a clear error
