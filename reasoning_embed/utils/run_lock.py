"""One run per directory: a run holds an exclusive lock on its run directory while it lives.

The lock is ``<run dir>/.run.lock``: an ``fcntl`` lock (the kernel drops it when the process dies, however it
dies) on a file that names the holder (pid, host, start time, command) for the message a second run prints.
A lock file that names a holder but is not locked is stale (its process died): it is taken over with a notice.
A clean exit empties the file, so the next run into the directory (a resume) starts silently.

Only the global rank 0 of a distributed job locks: the other ranks share its directory by design.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from reasoning_embed.errors import ReasoningEmbedError

LOCK_NAME = ".run.lock"
_held: dict[Path, "RunDirLock"] = {}


class RunDirBusyError(ReasoningEmbedError):
    """Another live process is writing into this run directory."""


class RunDirLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict | None = None  # the stale holder this lock replaced, if any

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusyError(f"run directory {self.run_dir} is in use by {_describe(holder)}; wait for it to "
                                  f"finish, stop it, or choose another hydra.run.dir") from None
        self.took_over = _read_holder(fd) or None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # empty = released cleanly; the file stays (unlinking a flocked file races)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"raw": raw[:200]}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it holds the lock but has not written its name yet)"
    return f"pid {holder['pid']} on host {holder.get('host', '?')} (started {holder.get('started', '?')})"


def is_rank_zero() -> bool:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


def hold_run_dir(run_dir: str | Path, notice=None) -> RunDirLock | None:
    """Lock ``run_dir`` for this process (idempotent: a second call from the same process is a no-op).

    Raises RunDirBusyError naming the other process if a live one holds it; a stale lock is taken over and
    ``notice`` (default: print to stderr) is called with one line saying so. Non-zero ranks return None.
    """
    if not is_rank_zero():
        return None
    key = Path(run_dir).resolve()
    if key in _held:
        return _held[key]
    lock = RunDirLock(key).acquire()
    _held[key] = lock
    if lock.took_over:
        msg = (f"note: took over the stale lock of {key} left by {_describe(lock.took_over)}, "
               f"which is no longer running")
        (notice or (lambda m: print(m, file=sys.stderr)))(msg)
    return lock


@contextmanager
def run_dir_held(run_dir: str | Path, notice=None):
    """Hold ``run_dir`` for the block; release it after only if this block took it (not the Hydra callback)."""
    already = Path(run_dir).resolve() in _held
    hold_run_dir(run_dir, notice)
    try:
        yield
    finally:
        if not already:
            release_run_dir(run_dir)


def release_run_dir(run_dir: str | Path) -> None:
    lock = _held.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


class RunLockCallback:
    """Hydra callback (``hydra.callbacks.run_dir_lock`` in train.yaml): lock the run directory before Hydra
    writes ``.hydra/`` and the log file into it, so a second run into a live directory changes nothing there."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        _lock_or_exit(OmegaConf.select(config, "hydra.run.dir"))

    def on_job_start(self, config, **kwargs) -> None:  # multirun jobs (and, again, the single run: a no-op)
        from omegaconf import OmegaConf

        _lock_or_exit(OmegaConf.select(config, "hydra.runtime.output_dir"))

    def on_job_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        release_run_dir(OmegaConf.select(config, "hydra.runtime.output_dir"))

    # the rest of Hydra's callback interface: nothing to do
    def on_run_end(self, config, **kwargs) -> None: ...
    def on_multirun_start(self, config, **kwargs) -> None: ...
    def on_multirun_end(self, config, **kwargs) -> None: ...


def _lock_or_exit(run_dir) -> None:
    if not run_dir:
        return
    try:
        hold_run_dir(run_dir)
    except RunDirBusyError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
