"""Layer-wise hidden states of one model over a text set, written once to disk and read again in chunks.

A cache entry is a directory ``<cache_dir>/<key>/`` holding

* ``states.bin``: the hidden states of every attended token of every text for the selected layers,
  raw ``L x N x d`` row-major in the storage dtype (float16, bfloat16 or float32), rows in text
  order (text t's tokens at rows ``offsets[t] : offsets[t] + len(ids[t])``);
* ``max_abs.npy`` / ``max_abs_first.npy``: per layer the max |x| per dimension over every token
  and over first tokens (massive activations), taken from the unrounded states;
* ``meta.json``: the key's fields, the shapes, and ``batches_done`` / ``complete``.

The **key** is a hash of everything the stored numbers depend on: the model's weights (a hash of
every parameter and buffer, so a changed weight never reuses a file), its class and config,
attention mode, compute dtype and attention implementation, the token ids of every text (texts,
tokenizer and truncation in one), the selected hidden-state indices, the batch size and the
storage dtype. Token-level states are stored, so the pooling and the token exclusions are applied
when reading: one entry serves the token and pooled levels and every exclusion setting. A changed
key is a different directory; an entry whose ``meta.json`` disagrees with its key is rebuilt.

**Resume**: batches are deterministic (longest first, :func:`reasoning_embed.models.encode.length_batches`);
every ``checkpoint_s`` seconds the data is synced to disk and ``batches_done`` (with the running
massive-activation maxima) recorded atomically, so an interrupted extraction restarts at the first
batch not recorded. Rows are written with positioned writes and read with positioned reads (no
memory map), so the page cache of a large entry never counts in the process's resident memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reasoning_embed.errors import ReasoningEmbedError
from reasoning_embed.utils.io import atomic_path, atomic_write_json

log = logging.getLogger("reasoning_embed.hrsa")

FORMAT_VERSION = 1
STORAGE = {"float16": (torch.float16, np.float16), "bfloat16": (torch.bfloat16, np.uint16),
           "float32": (torch.float32, np.float32)}
__all__ = ["CachedStates", "CacheRowSource", "model_fingerprint", "cache_key", "extract_states", "STORAGE"]


class FeatureCacheError(ReasoningEmbedError, ValueError):
    """A cache entry cannot be written as asked (e.g. values beyond the storage dtype's range)."""


# ------------------------------------------------------------------------------------------ keys
def model_fingerprint(enc) -> str:
    """Hash of the encoder's weights (every parameter and buffer), class, config and reading mode."""
    h = hashlib.blake2b(digest_size=16)
    bb = enc.backbone
    cfg = bb.config
    h.update(type(bb).__name__.encode())
    h.update(cfg.to_json_string(use_diff=False).encode())
    h.update(str((enc.attention, getattr(cfg, "_attn_implementation", None), str(bb.dtype))).encode())
    tensors = list(bb.named_parameters()) + list(bb.named_buffers())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B"))
    return h.hexdigest()


def ids_digest(ids) -> str:
    h = hashlib.blake2b(digest_size=16)
    for row in ids:
        h.update(np.asarray(row, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def cache_key(fingerprint: str, ids, layers, batch_size: int, storage: str) -> tuple[str, dict]:
    fields = {"format": FORMAT_VERSION, "model": fingerprint, "ids": ids_digest(ids), "n_texts": len(ids),
              "layers": [int(v) for v in layers], "batch_size": int(batch_size), "storage": storage}
    key = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=12).hexdigest()
    return key, fields


# ---------------------------------------------------------------------------------------- storage
class _StatesFile:
    """Positioned reads and writes of ``L x N x d`` rows in one raw file."""

    def __init__(self, path: Path, L: int, N: int, d: int, storage: str, create: bool):
        self.path, self.L, self.N, self.d, self.storage = Path(path), L, N, d, storage
        self.tdtype, self.ndtype = STORAGE[storage]
        self.itemsize = np.dtype(self.ndtype).itemsize
        if create or not self.path.exists():
            with open(self.path, "wb") as f:
                f.truncate(L * N * d * self.itemsize)
        self.fd = os.open(self.path, os.O_RDWR)

    def _offset(self, layer: int, row: int) -> int:
        return ((layer * self.N) + row) * self.d * self.itemsize

    def write(self, layer: int, row: int, x: torch.Tensor) -> None:
        raw = x.detach().to("cpu", self.tdtype).contiguous()
        if self.storage == "bfloat16":
            raw = raw.view(torch.int16)
        os.pwrite(self.fd, memoryview(raw.numpy()).cast("B"), self._offset(layer, row))

    def read(self, layer: int, start: int, stop: int) -> torch.Tensor:
        count = (stop - start) * self.d
        buf = np.empty(count, dtype=self.ndtype)
        view = memoryview(buf).cast("B")
        got, off = 0, self._offset(layer, start)
        while got < view.nbytes:                        # pread may return fewer bytes than asked
            k = os.preadv(self.fd, [view[got:]], off + got)
            if k <= 0:
                raise FeatureCacheError(f"{self.path}: truncated cache file (layer {layer}, rows {start}:{stop})")
            got += k
        t = torch.from_numpy(buf).view(stop - start, self.d)
        return t.view(torch.bfloat16) if self.storage == "bfloat16" else t

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@dataclass
class CachedStates:
    """One model's cached hidden states (see the module docstring)."""

    path: Path
    layers: list[int]                  # hidden-state indices stored, in order
    dim: int
    offsets: np.ndarray                # n_texts + 1: text t's rows are offsets[t]:offsets[t+1]
    max_abs: torch.Tensor              # L x d over every token
    max_abs_first: torch.Tensor        # L x d over first tokens
    file: _StatesFile
    reused: bool = False
    seconds: float = 0.0

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def layer_pos(self, hidden_index: int) -> int:
        return self.layers.index(int(hidden_index))

    def source(self, layers, rows: np.ndarray | None = None) -> "CacheRowSource":
        return CacheRowSource(self, [self.layer_pos(v) for v in layers], rows)

    def gather(self, layer_pos: int, rows: np.ndarray, chunk: int = 8192) -> torch.Tensor:
        """Rows ``rows`` (stored indices, any order) of one stored layer, float32, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty(len(rows), self.dim)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        for s in range(0, len(srt), chunk):
            part = srt[s:s + chunk]
            block = self.file.read(layer_pos, int(part[0]), int(part[-1]) + 1)
            out[torch.from_numpy(order[s:s + chunk])] = block[torch.from_numpy(part - part[0])].float()
        return out


class CacheRowSource:
    """Analysis rows (a subset of stored rows, increasing) of some stored layers, as a RowSource."""

    def __init__(self, states: CachedStates, layer_pos: list[int], rows: np.ndarray | None):
        self.states, self.layer_pos = states, layer_pos
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.n_layers, self.dim = len(layer_pos), states.dim
        self.n_rows = states.n_rows if rows is None else len(self.rows)
        self.storage_bytes = states.file.itemsize

    def read(self, layer: int, start: int, stop: int) -> torch.Tensor:
        f, lp = self.states.file, self.layer_pos[layer]
        if self.rows is None:
            return f.read(lp, start, stop)
        stored = self.rows[start:stop]
        if stop <= start:
            return torch.empty(0, self.dim)
        block = f.read(lp, int(stored[0]), int(stored[-1]) + 1)
        if len(stored) == block.shape[0]:
            return block
        return block[torch.from_numpy(stored - stored[0])]


# -------------------------------------------------------------------------------------- extraction
def _open_entry(entry: Path, fields: dict, L: int, N: int, d: int, storage: str):
    """(file, meta, max_abs, max_abs_first) of a fresh or resumable entry."""
    meta_path = entry / "meta.json"
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = None
        if meta is not None and (meta.get("key") != fields or meta.get("shape") != [L, N, d]
                                 or not (entry / "states.bin").is_file()):
            log.warning("feature cache %s does not match its key: rebuilt", entry)
            meta = None
    entry.mkdir(parents=True, exist_ok=True)
    if meta is None:
        meta = {"key": fields, "shape": [L, N, d], "batches_done": 0, "complete": False}
        f = _StatesFile(entry / "states.bin", L, N, d, storage, create=True)
        mx, first = torch.zeros(L, d), torch.zeros(L, d)
        atomic_write_json(meta_path, meta)
    else:
        f = _StatesFile(entry / "states.bin", L, N, d, storage, create=False)
        if meta["batches_done"] > 0:
            mx = torch.from_numpy(np.load(entry / "max_abs.npy"))
            first = torch.from_numpy(np.load(entry / "max_abs_first.npy"))
        else:
            mx, first = torch.zeros(L, d), torch.zeros(L, d)
    return f, meta, mx, first


def _checkpoint(entry: Path, f: _StatesFile, meta: dict, mx, first, done: int, complete: bool = False) -> None:
    f.sync()                                             # data first, then the record that it is there
    for name, value in (("max_abs.npy", mx), ("max_abs_first.npy", first)):
        with atomic_path(entry / name) as tmp:
            np.save(tmp, value.numpy())
    meta.update(batches_done=done, complete=complete)
    atomic_write_json(entry / "meta.json", meta)


def _write_batch(f: _StatesFile, H: torch.Tensor, idx, offsets, lens, pads, mx, first, storage) -> None:
    """H: L x b x s x d hidden states of one batch; rows written at their texts' offsets."""
    if storage != "float32":
        limit = torch.finfo(STORAGE[storage][0]).max
        if bool((H.abs() > limit).any()):
            raise FeatureCacheError(f"hidden states exceed the {storage} range ({limit:g}): store them as "
                                    f"bfloat16 or float32 (hrsa option cache.dtype)")
    for r, t in enumerate(idx):
        o, n = pads[r], lens[t]
        rows = H[:, r, o:o + n]                           # L x n x d
        torch.maximum(mx, rows.abs().amax(1).cpu(), out=mx)
        torch.maximum(first, rows[:, 0].abs().cpu(), out=first)
        for layer in range(H.shape[0]):
            f.write(layer, int(offsets[t]), rows[layer])


@torch.no_grad()
def extract_states(enc, ids: list[list[int]], layers: list[int], *, cache_dir, batch_size: int = 16,
                   storage: str = "float32", progress: bool = True, checkpoint_s: float = 10.0,
                   name: str = "model", fingerprint: str | None = None) -> CachedStates:
    """The hidden states ``layers`` of ``enc`` over every text's ``ids``, from the cache or extracted into it.

    ``ids``: unpadded token ids per text (as the model reads them). Texts with no token get no rows.
    """
    from reasoning_embed.models.encode import length_batches, pad_rows

    if storage not in STORAGE:
        raise ValueError(f"cache dtype must be one of {sorted(STORAGE)}, got {storage!r}")
    t0 = time.perf_counter()
    fingerprint = fingerprint or model_fingerprint(enc)
    key, fields = cache_key(fingerprint, ids, layers, batch_size, storage)
    entry = Path(cache_dir) / key
    lens = [len(x) for x in ids]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    L, N = len(layers), int(offsets[-1])
    d = int(enc.backbone.config.hidden_size)
    f, meta, mx, first = _open_entry(entry, fields, L, N, d, storage)
    todo = [i for i in range(len(ids)) if lens[i] > 0]
    batches = list(length_batches([lens[i] for i in todo], batch_size))
    reused = bool(meta["complete"])
    if reused:
        log.info("%s: hidden states reused from the feature cache %s", name, entry)
    else:
        done = int(meta["batches_done"])
        if done:
            log.info("%s: resuming the feature cache %s at batch %d of %d", name, entry, done, len(batches))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches), initial=done, desc=f"hrsa features {name}", unit="batch")
        was = enc.training
        enc.eval()
        pad_id, side = enc.tokenizer.hf.pad_token_id, enc.tokenizer.hf.padding_side
        last, completed = time.perf_counter(), done
        try:
            for b in range(done, len(batches)):
                idx = [todo[i] for i in batches[b]]
                input_ids, mask, pads = pad_rows([ids[t] for t in idx], pad_id, side)
                hs = enc.hidden_states(input_ids.to(enc.device), mask.to(enc.device))
                H = torch.stack([hs[i] for i in layers]).float()
                _write_batch(f, H, idx, offsets, lens, pads, mx, first, storage)
                del hs, H
                completed = b + 1
                if bar is not None:
                    bar.update(1)
                if time.perf_counter() - last > checkpoint_s:
                    _checkpoint(entry, f, meta, mx, first, completed)
                    last = time.perf_counter()
        except BaseException:
            _checkpoint(entry, f, meta, mx, first, completed)   # an interrupted run resumes after the last batch
            raise
        finally:
            enc.train(was)
            if bar is not None:
                bar.close()
        _checkpoint(entry, f, meta, mx, first, len(batches), complete=True)
    return CachedStates(path=entry, layers=[int(v) for v in layers], dim=d, offsets=offsets, max_abs=mx,
                        max_abs_first=first, file=f, reused=reused, seconds=time.perf_counter() - t0)
