"""Resumable, memory-mapped embedding tables.

``embed_table`` encodes a fixed list of texts in batches (longest first, so padding is small) into
``<work_dir>/<name>.f32`` (a numpy memmap, n x d float32) and records the number of finished batches in
``<work_dir>/<name>.state.json`` after each batch (memmap flushed first). A run that is interrupted and
started again with the same texts, model and batch size encodes only the batches that are not done; any
change of those starts the table afresh. Memory stays at one batch plus the page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from reasoning_embed.models.encode import length_batches
from reasoning_embed.utils.io import atomic_write_json

STATE_VERSION = 1

log = logging.getLogger(__name__)


def content_key(*parts: Sequence[str] | str | int | None) -> str:
    """A hash of lists of texts (and scalars): the identity of what a table holds."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, (list, tuple)):
            h.update(b"L%d\0" % len(part))
            for t in part:
                h.update(("" if t is None else str(t)).encode("utf-8", "surrogatepass"))
                h.update(b"\0")
        else:
            h.update(repr(part).encode())
            h.update(b"\1")
    return h.hexdigest()


def embed_table(work_dir: str | Path, name: str, texts: Sequence[str], encode: Callable[[list[int]], np.ndarray],
                dim: int, batch_size: int, key: str, progress: bool = True,
                on_batch: Callable[[str, int, int], None] | None = None) -> tuple[np.memmap, dict]:
    """Embeddings of ``texts`` (row i = text i) as a read-only memmap, plus counts of this call's work.

    ``encode(indices)`` embeds ``[texts[i] for i in indices]``; ``key`` identifies the model and anything
    else that changes the embeddings. ``on_batch(name, batch_index, n_batches)`` runs after each batch is
    safely on disk (the interruption test raises from it).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_path, state_path = work_dir / f"{name}.f32", work_dir / f"{name}.state.json"
    n = len(texts)
    n_batches = (n + batch_size - 1) // batch_size
    full_key = content_key(key, list(texts), batch_size, dim, STATE_VERSION)
    done = 0
    if state_path.is_file() and data_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            state = {}
        if state.get("key") == full_key and data_path.stat().st_size == n * dim * 4:
            done = int(state.get("done_batches", 0))
    if done == 0:
        state_path.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
    stats = {"texts": n, "batches": n_batches, "batches_resumed": done, "batches_encoded": 0}
    if 0 < done < n_batches:
        log.info("%s: resuming at batch %d of %d (the first %d are already on disk in %s)", name, done + 1,
                 n_batches, done, work_dir)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32), stats
    mm = np.memmap(data_path, dtype=np.float32, mode="r+" if done else "w+", shape=(n, dim))
    # the encode loop's grouping (longest first, stable), by characters: the reference may be any model
    all_batches = list(length_batches([len(t) for t in texts], batch_size))
    batches = range(done, n_batches)
    if progress and len(batches):
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"encode {name}", unit="batch", initial=done, total=n_batches)
    for b in batches:
        idx = all_batches[b]
        emb = np.asarray(encode(idx), dtype=np.float32)
        if emb.shape != (len(idx), dim):
            raise RuntimeError(f"encoder returned shape {emb.shape}, expected {(len(idx), dim)}")
        mm[idx] = emb
        mm.flush()
        atomic_write_json(state_path, {"key": full_key, "done_batches": b + 1, "n_batches": n_batches,
                                       "texts": n, "dim": dim, "batch_size": batch_size})
        stats["batches_encoded"] += 1
        if on_batch is not None:
            on_batch(name, b, n_batches)
    del mm
    return np.memmap(data_path, dtype=np.float32, mode="r", shape=(n, dim)), stats
