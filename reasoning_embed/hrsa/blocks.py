"""The pieces every budgeted HRSA engine shares: a memory budget (``4GB``), row sources read again and
again (tensors or the feature cache), the layer-block plan of the feature-space route, and the measured
GEMM rate the plans estimate time with. :mod:`.cka_blocked` (feature-space blocks) and :mod:`.cka_gram`
(Gram tiles) both build on this module, and neither is imported by it."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

__all__ = ["format_bytes", "RowSource", "TensorSource", "IndexedSource", "BlockPlan", "parse_budget", "plan_blocks", "gemm_gflops"]

def format_bytes(b: float) -> str:
    """A plan's memory figure: GB from 0.1 GB up, MB below."""
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"


def plan_cost(state_bytes: float, budget: int | None, flops: float, est_seconds: float | None) -> str:
    """The tail every plan's ``describe()`` ends with: memory against the budget, GEMM work, time estimate."""
    return (f"memory {format_bytes(state_bytes)} of budget {format_bytes(budget) if budget else 'unlimited'}; "
            f"{flops / 1e12:.2f} TFLOP" + (f", estimated {est_seconds:.0f} s" if est_seconds is not None else ""))


_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_budget(budget) -> int | None:
    """``"4GB"``, ``"512MiB"``, ``2e9`` or ``None`` (no limit) -> bytes."""
    if budget is None or (isinstance(budget, str) and budget.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(budget, (int, float)):
        value = int(budget)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(budget))
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(f"memory_budget must look like 4GB, 512MB or 2GiB (or null), got {budget!r}")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"memory_budget must be positive, got {budget!r}")
    return value


class RowSource(Protocol):
    """Rows (tokens or texts) of every layer of one model, readable again in chunks."""

    n_layers: int
    n_rows: int
    dim: int

    def read(self, layer: int, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of layer ``layer`` (``rows x dim``, any float dtype, CPU)."""


class TensorSource:
    """A ``L x n x d`` tensor (or a list of ``n x d`` tensors) as a :class:`RowSource`."""

    def __init__(self, x):
        if isinstance(x, torch.Tensor) and x.ndim == 2:
            x = x.unsqueeze(0)
        self.layers = list(x)
        if len({t.shape for t in self.layers}) != 1:
            raise ValueError("all layers must have the same shape (rows x dim)")
        self.n_layers = len(self.layers)
        self.n_rows, self.dim = self.layers[0].shape

    def read(self, layer: int, start: int, stop: int) -> torch.Tensor:
        return self.layers[layer][start:stop]


class IndexedSource:
    """Rows ``rows`` of layers ``layers`` of a ``L x N x d`` tensor (e.g. the HRSA sample), read without copying
    the selection whole."""

    def __init__(self, x: torch.Tensor, layers, rows):
        self.x, self.layers = x, list(layers)
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.n_layers, self.n_rows, self.dim = len(self.layers), int(self.rows.numel()), x.shape[-1]

    def read(self, layer: int, start: int, stop: int) -> torch.Tensor:
        return self.x[self.layers[layer]].index_select(0, self.rows[start:stop].to(self.x.device))


# ------------------------------------------------------------------------------------------ plan
@dataclass
class BlockPlan:
    blocks_a: list[list[int]]
    blocks_b: list[list[int]]
    self_block_a: int                 # layers per block in the self pass
    self_block_b: int
    row_chunk: int
    compute_dtype: torch.dtype
    budget: int | None
    state_bytes: int                  # peak bytes of statistics + chunk buffers (the budgeted part)
    flops: float                      # multiply-adds x 2 of the GEMMs
    reads: dict = field(default_factory=dict)     # passes over each source
    est_seconds: float | None = None
    route: str = "feature"

    def describe(self) -> str:
        pairs = len(self.blocks_a) * len(self.blocks_b)
        return (f"CKA plan: {len(self.blocks_a)} x {len(self.blocks_b)} layer blocks "
                f"({len(self.blocks_a[0])} x {len(self.blocks_b[0])} layers, {pairs} block pairs), row chunks of "
                f"{self.row_chunk}, {self.compute_dtype} GEMMs; passes over the features: model A "
                f"{self.reads['a']}, model B {self.reads['b']}; "
                + plan_cost(self.state_bytes, self.budget, self.flops, self.est_seconds))


def _split(L: int, size: int) -> list[list[int]]:
    n = math.ceil(L / size)
    base, extra = divmod(L, n)                      # balanced blocks
    out, s = [], 0
    for k in range(n):
        e = s + base + (k < extra)
        out.append(list(range(s, e)))
        s = e
    return out


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def plan_blocks(La: int, Lb: int, da: int, db: int, n: int, budget=None, compute_dtype=torch.float32,
                storage_bytes: int = 4, row_chunk: int | None = None, block_a: int | None = None,
                block_b: int | None = None, gflops: float | None = None) -> BlockPlan:
    """Layer blocks and row chunk that fit ``budget`` (bytes or ``"4GB"``; ``None``: one block).

    Cost model (bytes): a block pair holds ``|Ia| |Jb| da db`` float64 sums, one ``da x db``
    product in ``compute_dtype``, and a row chunk of both blocks in ``compute_dtype`` plus one
    layer's chunk as read and in float64. Among the blockings that fit, the one with the least
    data read (sum over passes of rows x layers x width) wins; ties go to larger row chunks.
    ``block_a``/``block_b``/``row_chunk`` force a blocking (tests, benchmarks).
    """
    budget_b = parse_budget(budget)
    cb = _nbytes(compute_dtype)
    acc_b = 8

    def chunk_bytes(ba, bb, r):
        return r * ((ba * da + bb * db) * cb + max(da, db) * (storage_bytes + 8) + 8 * (ba + bb))

    def cross_bytes(ba, bb, r):
        return ba * bb * da * db * acc_b + da * db * cb + chunk_bytes(ba, bb, r) + 8 * La * Lb

    def self_bytes(s, d, r):
        return s * d * d * acc_b + d * d * cb + r * (s * d * cb + d * (storage_bytes + 8))

    n_eff = max(1, n)
    chunks = [row_chunk] if row_chunk else sorted({min(c, n_eff) for c in (8192, 4096, 2048, 1024, 512, 256, 128, 64, 16)},
                                                  reverse=True)
    best = None
    for ba in ([block_a] if block_a else range(La, 0, -1)):
        for bb in ([block_b] if block_b else range(Lb, 0, -1)):
            nA, nB = math.ceil(La / ba), math.ceil(Lb / bb)
            for r in chunks:
                if budget_b is not None and cross_bytes(ba, bb, r) > budget_b and not (block_a and block_b):
                    continue
                volume = nB * La * da + nA * Lb * db
                key = (volume, -r)
                if best is None or key < best[0]:
                    best = (key, ba, bb, r)
                break                                   # the largest chunk that fits for this blocking
    if best is None:
        need = cross_bytes(1, 1, chunks[-1])
        raise ValueError(f"memory_budget {budget!r} is too small for one layer pair of widths {da} x {db}: "
                         f"at least {need / 1e6:.1f} MB is needed")
    _, ba, bb, r = best

    def self_block(L, d):
        for s in range(L, 0, -1):
            if budget_b is None or self_bytes(s, d, r) <= budget_b:
                return s
        return 1

    sa, sb = self_block(La, da), self_block(Lb, db)
    blocks_a, blocks_b = _split(La, ba), _split(Lb, bb)
    ba, bb = len(blocks_a[0]), len(blocks_b[0])
    state = max(cross_bytes(ba, bb, r), self_bytes(sa, da, r), self_bytes(sb, db, r))
    flops = 2.0 * n * (La * Lb * da * db + La * da * da + Lb * db * db)
    plan = BlockPlan(blocks_a=blocks_a, blocks_b=blocks_b, self_block_a=sa, self_block_b=sb, row_chunk=r,
                     compute_dtype=compute_dtype, budget=budget_b, state_bytes=int(state), flops=flops,
                     reads={"a": 2 + len(blocks_b), "b": 2 + len(blocks_a)})
    if gflops:
        plan.est_seconds = flops / (gflops * 1e9)
    return plan


def gemm_gflops(dtype=torch.float32, device="cpu", d: int = 512, rows: int = 2048, repeats: int = 3) -> float:
    """Measured GFLOP/s of one ``rows x d x d`` GEMM (for the plan's time estimate)."""
    dev = torch.device(device)
    a = torch.randn(rows, d, dtype=dtype, device=dev)
    c = torch.zeros(d, d, dtype=dtype, device=dev)
    c.addmm_(a.T, a)
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        c.addmm_(a.T, a)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2.0 * rows * d * d / max(best, 1e-9) / 1e9


def cka_ratio(num, den2):
    """CKA from its numerator and the product of the two self terms; nan where a self term is 0."""
    out = num / torch.sqrt(den2.clamp_min(0))
    return torch.where(den2 > 0, out, torch.full_like(out, float("nan")))
