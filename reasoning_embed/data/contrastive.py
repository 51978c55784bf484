"""Contrastive groups, batches drawn one source file at a time, and their collation into model inputs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reasoning_embed.data.jsonl import Row

NO_NEGATIVE_POLICIES = ("drop", "in_file", "error")


def apply_no_negative_policy(rows: list[Row], policy: str, path) -> tuple[list[Row], int]:
    """Rows without negatives: ``drop`` them (the paper), keep them and draw ``in_file`` random passages of
    other rows as negatives at each step, or ``error``. Returns the kept rows and how many were dropped."""
    if policy not in NO_NEGATIVE_POLICIES:
        raise ValueError(f"no_negative_policy must be one of {NO_NEGATIVE_POLICIES}, got {policy!r}")
    missing = [i for i, r in enumerate(rows) if not r.neg]
    if not missing:
        return rows, 0
    if policy == "error":
        from reasoning_embed.errors import DataFormatError

        raise DataFormatError(path, None, "neg", f"{len(missing)} rows have no negatives (first at row "
                              f"{missing[0] + 1}); set data.no_negative_policy=drop or in_file")
    if policy == "drop":
        return [r for r in rows if r.neg], len(missing)
    return rows, 0


class ContrastiveDataset(Dataset):
    """Rows of several files; item ``(index, epoch)`` -> one query, one positive, ``num_negatives`` negatives.

    The positive and negatives are drawn with a generator seeded by (seed, epoch, index), so a step's
    batch is the same whatever the worker count, and again after resuming.
    """

    def __init__(self, files_rows: list[list[Row]], num_negatives: int = 3, seed: int = 0):
        self.rows = [row for rows in files_rows for row in rows]
        self.file_sizes = [len(rows) for rows in files_rows]
        self.file_offsets = [sum(self.file_sizes[:i]) for i in range(len(files_rows))]
        self.num_negatives = num_negatives
        self.seed = seed

    def __len__(self):
        return len(self.rows)

    def _file_of(self, index):
        for f in range(len(self.file_sizes) - 1, -1, -1):
            if index >= self.file_offsets[f]:
                return f
        raise IndexError(index)

    def _in_file_negatives(self, index, row, rng, tries: int = 100) -> list[str]:
        """``num_negatives`` positives of *other* rows of the same file, never a text equal to one of this
        row's own positives (the row itself is skipped by index, duplicates of its positives by text)."""
        f = self._file_of(index)
        lo, n = self.file_offsets[f], self.file_sizes[f]
        own = set(row.pos)
        negs = []
        for _ in range(self.num_negatives):
            for _ in range(tries if n > 1 else 0):
                j = rng.randrange(n - 1)
                j = lo + j + (j >= index - lo)            # any row of the file but this one
                others = [p for p in self.rows[j].pos if p not in own]
                if others:
                    negs.append(rng.choice(others))
                    break
        if not negs:
            raise ValueError(f"no_negative_policy=in_file: row {index - lo} of training file {f} has no other row "
                             "with a different positive to draw negatives from")
        return negs

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        row = self.rows[index]
        rng = random.Random(hash((self.seed, epoch, index)) & 0xFFFFFFFF)
        pos = rng.choice(row.pos)
        negs = list(row.neg)
        if not negs:  # in_file policy: other rows' positives of the same file
            negs = self._in_file_negatives(index, row, rng)
        if len(negs) >= self.num_negatives:
            negs = rng.sample(negs, self.num_negatives)
        else:  # top up by sampling with repetition (the recipe)
            negs = negs + [rng.choice(negs) for _ in range(self.num_negatives - len(negs))]
        return {"instruction": row.instruction, "query": row.query, "passages": [pos] + negs}


class MixtureBatchSampler(Sampler):
    """Global batches drawn from one file each (remainders pooled into mixed batches); this rank's slice.

    Every rank builds the same global order from (seed, epoch) and takes rows ``[rank::world]`` positions
    ``rank * per_device : (rank + 1) * per_device`` — so a global batch is one source across devices.
    ``skip`` batches are dropped from the start of the epoch (resuming mid-epoch).

    ``file_weights`` (one per file, default 1) set each file's share of an epoch: a file of ``n`` rows at
    weight ``w`` gives ``round(n * w)`` rows. Below 1, a random ``round(n * w)`` of its rows (0 leaves the file
    out); above 1, all its rows plus ``round(n * (w - 1)) // g`` extra whole batches (``g`` = global batch), each
    cut from a fresh shuffle of the file, so a row never meets itself in a batch: in-batch negatives stay true.
    """

    def __init__(self, file_sizes: list[int], batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, file_weights: list[float] | None = None):
        self.file_sizes, self.batch_size = file_sizes, batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.global_batch = batch_size * world_size
        self.file_weights = [1.0] * len(file_sizes) if file_weights is None else [float(w) for w in file_weights]
        if len(self.file_weights) != len(file_sizes) or any(not 0 <= w < math.inf for w in self.file_weights):
            raise ValueError(f"file_weights must be {len(file_sizes)} finite numbers >= 0 (one per file), "
                             f"got {file_weights!r}")
        g = self.global_batch
        for f, (size, w) in enumerate(zip(file_sizes, self.file_weights)):
            if w > 1 and size < g:
                raise ValueError(f"file {f} has {size} rows, fewer than one global batch ({g}): weight {w} cannot "
                                 "add whole batches of it; lower its weight to <= 1 or data.batch_size")
        self.epoch, self.skip = 0, 0
        if len(self) == 0:
            raise ValueError(f"{sum(file_sizes)} rows cannot fill one global batch of "
                             f"{batch_size} x {world_size} devices; lower data.batch_size")

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _shuffled(self, rng, offset, size) -> list[int]:
        idx = list(range(offset, offset + size))
        if self.shuffle:
            rng.shuffle(idx)
        return idx

    def _plan(self, size: int, weight: float) -> tuple[int, int]:
        """(rows taken once, extra whole batches) of a file in one epoch."""
        g = self.global_batch
        if weight <= 1:
            return round(size * weight), 0
        return size, round(size * (weight - 1)) // g

    def global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        g = self.global_batch
        batches, leftovers, offset = [], [], 0
        for size, weight in zip(self.file_sizes, self.file_weights):
            taken, extra = self._plan(size, weight)
            idx = self._shuffled(rng, offset, size)[:taken]
            full = taken // g * g
            batches += [idx[i:i + g] for i in range(0, full, g)]
            leftovers += idx[full:]
            while extra:  # each pass a fresh shuffle, cut into whole batches only
                n = min(extra, size // g)
                idx = self._shuffled(rng, offset, size)
                batches += [idx[i:i + g] for i in range(0, n * g, g)]
                extra -= n
            offset += size
        if self.shuffle:
            rng.shuffle(leftovers)
        batches += [leftovers[i:i + g] for i in range(0, len(leftovers) // g * g, g)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self):
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        skip, self.skip = self.skip, 0  # a resume position applies to the resumed epoch only
        for batch in self.global_batches()[skip:]:
            yield [(i, self.epoch) for i in batch[lo:hi]]

    def __len__(self):
        g = self.global_batch
        plans = [self._plan(s, w) for s, w in zip(self.file_sizes, self.file_weights)]
        full = sum(taken // g + extra for taken, extra in plans)
        leftovers = sum(taken % g for taken, _ in plans)
        return full + leftovers // g


class ResumableLoader(DataLoader):
    """The training DataLoader, with its position in Lightning's checkpoints (the ``state_dict`` protocol).

    The order is a function of (seed, epoch), so the position is the epoch and the batches already trained on;
    ``consumed`` says how many (the training loop's count, which the loader cannot see: it reads ahead).
    Resuming mid-epoch skips exactly those batches and the run continues as if never stopped.
    """

    def __init__(self, *args, consumed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = consumed or (lambda: 0)

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "batches_consumed": int(self._consumed())}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.set_epoch(int(state["epoch"]))
        self.batch_sampler.skip = int(state["batches_consumed"])


@dataclass
class ContrastiveCollator:
    """Tokenizes a list of groups: queries (with instructions) and passages flattened group by group."""

    tokenizer: object  # TextTokenizer

    def __call__(self, items: list[dict]) -> dict:
        group = len(items[0]["passages"])
        q = self.tokenizer.queries([it["query"] for it in items], [it["instruction"] for it in items])
        p = self.tokenizer.passages([t for it in items for t in it["passages"]])
        return {"query": q, "passages": p, "group_size": group}


def batch_tokens(batch: dict) -> int:
    return int(batch["query"]["attention_mask"].sum() + batch["passages"]["attention_mask"].sum())


def to_device(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {kk: vv.to(device) for kk, vv in v.items()}
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        else:
            out[k] = v
    return out
