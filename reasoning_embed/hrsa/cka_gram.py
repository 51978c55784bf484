"""All-pairs linear CKA in kernel (Gram) space within a memory budget, with its jackknife and permutation null.

The feature-space engine (:mod:`~reasoning_embed.hrsa.cka_blocked`) costs ``2 n La Lb da db`` FLOPs: 2e13 for
two 29-layer models of width 1536 over 5,000 tokens. In kernel space the same statistics cost
``~(La da + Lb db) n^2`` for the centred Gram matrices ``K_i = Xc_i Xc_i^T`` (half of them, by symmetry) plus
``La Lb n^2`` for their inner products: 4.4e12 at n = 5,000. :func:`choose_plan` takes the cheaper route.

**Tiles.** Rows are cut into T panels; for every panel pair ``r <= s`` the tile ``K_i[R, S]`` of every layer of a
layer block is formed in ``compute_dtype`` (float32 by default) from rows centred exactly in float64, and the
tiles' inner products are summed in float64 (``<K, L> = sum_r <K_rr, L_rr> + 2 sum_{r<s} <K_rs, L_rs>``).
When the budget holds every panel of a layer-block pair, they are read once (one allocation per model);
otherwise panel ``r`` stays in memory while the panels ``s > r`` are read one layer at a time, and a block pair
reads the source ``1 + (T - 1) / 2`` times. The budget holds the tiles, the panels held and the sums.

**Jackknife** (delete-a-block over texts, the blocks of :func:`~reasoning_embed.hrsa.intervals.jackknife_blocks`):
with ``x`` centred on all rows, ``u_b`` / ``v_b`` the sums of block b's rows and ``N = n - n_b``, the cross
matrix of the rows kept is ``C - D_b - u_b v_b^T / N`` (``D_b = X_b^T Y_b``), so

    ||C^(b)||^2 = <K, L> + T3_b - 2 T2_b + |u_b|^2 |v_b|^2 / N^2 - 2 PQ_b / N + 2 PQin_b / N

with ``T2_b = sum_{t in b} sum_s K_ts L_ts`` (row slices of the tiles: rows are sorted by block inside each
panel), ``T3_b = <K_bb, L_bb>``, ``PQ_b = sum_s (x_s.u_b)(y_s.v_b)`` and ``PQin_b`` the same over ``s in b``.
The debiased replicate uses the kept rows re-centred (``a_t = ||x_t - m_b||^2``), as
:func:`~reasoning_embed.hrsa.intervals.cka_jackknife` does; every replicate equals it.

**Permutation null** (:func:`cka_null_blocked`): a permutation of texts permutes the rows of Y, so
``<K_i, L_j[p, p]>`` (and ``sum_t a_t b_p(t)`` for the debiased form) is the null numerator; the full Grams of a
layer block pair are held (a permutation scatters every tile) and gathered once per permutation and layer.

Every quantity is tested against the in-memory computations (``CKAAccumulator``, ``cka_jackknife``,
``cka_permutation_test``, ``cka_layers_calibrated``) to 1e-10 relative in float64, for every blocking. The
code is device-agnostic torch (sources are read on the CPU, moved to ``device``).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from .blocks import TensorSource, _nbytes, _split, cka_ratio, format_bytes, parse_budget, plan_cost
from .cka import debias_hsic

__all__ = ["GramPlan", "GramCKA", "plan_gram", "choose_plan", "cka_gram_blocked", "cka_null_blocked",
           "NullPlan", "plan_null"]

log = logging.getLogger("reasoning_embed.hrsa")
_READ_ELEMS_PER_S = 3.0e8          # source elements read, centred in float64 and cast (~3 ns each on one core)
_F64_CHUNK = 1 << 22               # elements of float64 tile copies alive at once in the inner products


def _panels(n: int, T: int) -> list[tuple[int, int]]:
    return [(p[0], p[-1] + 1) for p in _split(n, math.ceil(n / T))] if n else []


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class GramPlan:
    blocks_a: list[list[int]]
    blocks_b: list[list[int]]
    panels: list[tuple[int, int]]
    compute_dtype: torch.dtype
    budget: int | None
    state_bytes: int
    flops: float                       # GEMM FLOPs (Gram tiles + their inner products)
    reads: dict = field(default_factory=dict)
    est_seconds: float | None = None
    jackknife_blocks: int = 0
    resident: bool = False             # all panels of a block pair held (one read) rather than panel r only
    route: str = "gram"

    @property
    def row_chunk(self) -> int:
        return self.panels[0][1] - self.panels[0][0] if self.panels else 0

    def describe(self) -> str:
        pairs = len(self.blocks_a) * len(self.blocks_b)
        T = len(self.panels)
        jk = f", jackknife over {self.jackknife_blocks} blocks" if self.jackknife_blocks else ""
        return (f"CKA plan (Gram route): {len(self.blocks_a)} x {len(self.blocks_b)} layer blocks "
                f"({len(self.blocks_a[0])} x {len(self.blocks_b[0])} layers, {pairs} block pairs), {T} row panels of "
                f"{self.row_chunk} ({T * (T + 1) // 2} tiles per block pair{', all panels held' if self.resident else ''}), "
                f"{self.compute_dtype} GEMMs{jk}; passes "
                f"over the features: model A {self.reads['a']:.1f}, model B {self.reads['b']:.1f}; "
                + plan_cost(self.state_bytes, self.budget, self.flops, self.est_seconds))


def _gram_cost(La, Lb, da, db, n, ba, bb, T, cb, storage_bytes, B, resident=False):
    """(state bytes, flops, passes a, passes b) of one blocking; ``resident``: every panel of the block pair is
    read once and kept (one pass per block pair) instead of panel r only (``1 + (T - 1) / 2`` passes)."""
    t = math.ceil(n / T)
    nA, nB = math.ceil(La / ba), math.ceil(Lb / bb)
    pairs_sum = (n * n + T * t * t) / 2.0
    held = n if resident else t
    state = ((ba + bb) * t * t * cb                        # Gram tiles
             + (ba * da + bb * db) * held * cb                # panel r of the block (all panels if resident)
             + (ba + bb) * held * 8 * (1 + B)                 # their squared norms and x . u_b
             + t * max(da, db) * (storage_bytes + 8 + cb)     # one layer's panel being read
             + min(_F64_CHUNK, (ba + bb) * t * t) * 8         # float64 copies in the inner products
             + 8 * La * Lb * (1 + 6 * B) + 8 * (La * da + Lb * db) * B
             + (ba + bb) * t * (8 + 8 * 3 * B))               # row quantities of the diagonal tile
    flops = 2.0 * (nB * La * da + nA * Lb * db) * pairs_sum + 2.0 * La * Lb * pairs_sum * (3 if B else 1)
    per = 1 if resident else 1 + (T - 1) / 2
    pa = 1 + nB * per + (1 if B else 0)
    pb = 1 + nA * per + (1 if B else 0)
    return int(state), flops, pa, pb


def _seconds(flops, rate, read_width, n, T, ba, bb, La, Lb, B):
    """Estimated time: GEMMs at ``rate`` times the efficiency of t-row tiles (~t / (t + 100), measured), the reads,
    and a fixed cost per GEMM call and per tile (Python, copies; the jackknife's slices per block)."""
    t = math.ceil(n / T)
    tiles = T * (T + 1) // 2 * math.ceil(La / ba) * math.ceil(Lb / bb)
    per_tile = (ba + bb) * 2e-5 + (3 * B + 1) * 5e-5
    return flops / (rate * t / (t + 100.0)) + read_width * n / _READ_ELEMS_PER_S + tiles * per_tile


def plan_gram(La: int, Lb: int, da: int, db: int, n: int, budget=None, compute_dtype=torch.float32,
              storage_bytes: int = 4, gflops: float | None = None, jackknife_blocks: int = 0,
              panels: int | None = None, block_a: int | None = None, block_b: int | None = None,
              resident: bool | None = None) -> GramPlan:
    """The Gram-route blocking (layer blocks, row panels) that fits ``budget`` with the least estimated time.

    ``panels``/``block_a``/``block_b``/``resident`` force a blocking (tests, benchmarks). Raises ValueError when
    nothing fits.
    """
    budget_b = parse_budget(budget)
    cb = _nbytes(compute_dtype)
    rate = (gflops or 20.0) * 1e9
    B = int(jackknife_blocks)
    Ts = [panels] if panels else sorted({min(max(1, n), T) for T in list(range(1, 17)) + [20, 24, 32, 48, 64, 96, 128]})
    best = None
    for ba in ([block_a] if block_a else range(La, 0, -1)):
        for bb in ([block_b] if block_b else range(Lb, 0, -1)):
            for T, res in itertools.product(Ts, [resident] if resident is not None else (True, False)):
                state, flops, pa, pb = _gram_cost(La, Lb, da, db, n, ba, bb, T, cb, storage_bytes, B, res)
                if budget_b is not None and state > budget_b and not (block_a and block_b and panels):
                    continue
                secs = _seconds(flops, rate, pa * La * da + pb * Lb * db, n, T, ba, bb, La, Lb, B)
                if best is None or secs < best[0]:
                    best = (secs, ba, bb, T, state, flops, pa, pb, res)
    if best is None:
        need = _gram_cost(La, Lb, da, db, n, 1, 1, Ts[-1], cb, storage_bytes, B)[0]
        raise ValueError(f"memory_budget {budget!r} is too small for the Gram route over {n} rows: at least "
                         f"{format_bytes(need)} is needed")
    secs, ba, bb, T, state, flops, pa, pb, res = best
    return GramPlan(blocks_a=_split(La, ba), blocks_b=_split(Lb, bb), panels=_panels(n, T), compute_dtype=compute_dtype,
                    budget=budget_b, state_bytes=state, flops=flops, reads={"a": pa, "b": pb},
                    est_seconds=secs if gflops else None, jackknife_blocks=B, resident=res)


def choose_plan(La, Lb, da, db, n, budget=None, compute_dtype=torch.float32, storage_bytes: int = 4,
                gflops: float | None = None, route: str = "auto", jackknife_blocks: int = 0):
    """The feature-space :class:`BlockPlan` or the :class:`GramPlan`, whichever is estimated faster
    (``route="feature"|"gram"`` forces one). The jackknife needs the Gram route."""
    from .blocks import plan_blocks

    if route not in ("auto", "feature", "gram"):
        raise ValueError(f"cka route must be auto, feature or gram, got {route!r}")
    if route == "gram" or jackknife_blocks:
        return plan_gram(La, Lb, da, db, n, budget, compute_dtype, storage_bytes, gflops, jackknife_blocks)
    fplan = plan_blocks(La, Lb, da, db, n, budget, compute_dtype, storage_bytes=storage_bytes, gflops=gflops)
    if route == "feature":
        return fplan
    try:
        gplan = plan_gram(La, Lb, da, db, n, budget, compute_dtype, storage_bytes, gflops)
    except ValueError:
        return fplan
    rate = (gflops or 20.0) * 1e9
    f_secs = fplan.flops / rate + (fplan.reads["a"] * La * da + fplan.reads["b"] * Lb * db) * n / _READ_ELEMS_PER_S
    g_secs = gplan.flops / rate + (gplan.reads["a"] * La * da + gplan.reads["b"] * Lb * db) * n / _READ_ELEMS_PER_S
    return gplan if g_secs < f_secs else fplan


# ---------------------------------------------------------------------------------------------- engine
@dataclass
class GramCKA:
    """Result of :func:`cka_gram_blocked` (the interface of a finished CKAAccumulator, plus the jackknife)."""

    biased: torch.Tensor
    debiased_matrix: torch.Tensor | None
    n: int
    plan: GramPlan
    seconds: float
    timings: dict
    jackknife: dict | None = None      # {"biased": {field: La x Lb}, "debiased": ...} (Interval fields)

    @property
    def track_debiased(self) -> bool:
        return self.debiased_matrix is not None

    def compute(self, debiased: bool = False) -> torch.Tensor:
        if not debiased:
            return self.biased.clone()
        if self.debiased_matrix is None:
            raise ValueError("this CKA was computed with debiased=False")
        if self.n <= 3:
            raise ValueError(f"the unbiased HSIC estimator needs n > 3 rows; got n={self.n}")
        return self.debiased_matrix.clone()


def _as_source(x):
    return x if hasattr(x, "read") else TensorSource(x)


def _read64(src, layer, s, e, dev):
    return src.read(layer, s, e).to(device=dev, dtype=torch.float64, copy=True)


def _means(src, dev, blk=None, B=0):
    """Exact float64 means (and, for the jackknife, the centred block sums U: L x B x d), one pass. Sums are of
    rows shifted by the layer's first row, so large common offsets do not cancel digits."""
    L, d, n = src.n_layers, src.dim, src.n_rows
    means = torch.zeros(L, d, dtype=torch.float64, device=dev)
    U = torch.zeros(L, B, d, dtype=torch.float64, device=dev) if B else None
    buf = _buffer(d, dev)
    for layer in range(L):
        x0 = _read64(src, layer, 0, 1, dev)[0]
        tot = torch.zeros(d, dtype=torch.float64, device=dev)
        for s in range(0, n, _CONVERT_ROWS):
            e = min(n, s + _CONVERT_ROWS)
            x = buf[:e - s]
            x.copy_(src.read(layer, s, e))
            x -= x0
            tot += x.sum(0)
            if B:
                U[layer].index_add_(0, blk[s:e], x)
        ms = tot / n
        means[layer] = x0 + ms
        if B:
            U[layer] -= torch.bincount(blk, minlength=B).to(torch.float64)[:, None] * ms[None, :]
    return means, U


_CONVERT_ROWS = 512
_BUFFERS: dict = {}
_GEMM_S = [0.0]


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), after which the
    multi-MB temporaries of the tiles come from the heap and stay there: 0.7 GB above the plan at 20,000 rows
    (4 layers), 2 GB at 29 layers. A fixed 1 MB threshold returns them to the OS (measured: the peak then
    equals the plan). Other C libraries: nothing to do."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)                      # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _buffer(d: int, dev) -> torch.Tensor:
    """A reused float64 conversion buffer (fresh multi-MB allocations page-fault: 3-4x slower conversion)."""
    key = (d, str(dev))
    if key not in _BUFFERS:
        _BUFFERS.clear()
        _BUFFERS[key] = torch.empty(_CONVERT_ROWS, d, dtype=torch.float64, device=dev)
    return _BUFFERS[key]


class _Panel:
    """One layer's rows of a panel, centred exactly in float64 and cast to the compute dtype, in the panel's row
    order (``pos``: where each read row goes; rows sorted by jackknife block); with ``norms`` the squared norms of
    the values the GEMMs see, with ``U`` (jackknife) ``P = x . u_b`` in float64."""

    def __init__(self, src, layer, s, e, mean, pos, cd, dev, U=None, norms=False, out=None):
        t, d = e - s, src.dim
        self.x = torch.empty(t, d, dtype=cd, device=dev) if out is None else out
        self.a = torch.empty(t, dtype=torch.float64, device=dev) if norms else None
        self.P = torch.empty(t, U.shape[1], dtype=torch.float64, device=dev) if U is not None else None
        buf = _buffer(d, dev)
        for c0 in range(0, t, _CONVERT_ROWS):
            c1 = min(t, c0 + _CONVERT_ROWS)
            x64 = buf[:c1 - c0]
            x64.copy_(src.read(layer, s + c0, s + c1))
            x64 -= mean[layer]
            xc = x64.to(cd) if cd != torch.float64 else x64
            idx = pos[c0:c1] if pos is not None else slice(c0, c1)
            self.x[idx] = xc
            if norms:
                v = xc.to(torch.float64) if cd != torch.float64 else x64
                self.a[idx] = (v * v).sum(1)
            if U is not None:
                self.P[idx] = x64 @ U[layer].T


def _dot(G1: torch.Tensor, G2: torch.Tensor, diag: bool) -> torch.Tensor:
    """float64 inner products of stacked tiles (p x m x k) and (q x m x k): p x q, or p (``diag``: G1[i] . G2[i])."""
    p, q, m = G1.shape[0], G2.shape[0], G1.shape[1]
    per_row = max(1, G1.shape[2] * (p + q))
    step = max(1, _F64_CHUNK // per_row)
    out = torch.zeros((p,) if diag else (p, q), dtype=torch.float64, device=G1.device)
    for s in range(0, m, step):
        a = G1[:, s:s + step].reshape(p, -1).to(torch.float64)
        if diag:
            out += (a * a).sum(1) if G2 is G1 else (a * G2[:, s:s + step].reshape(q, -1).to(torch.float64)).sum(1)
        else:
            out += a @ G2[:, s:s + step].reshape(q, -1).to(torch.float64).T
    return out


def _tile_terms(G1, G2, diag: bool, offdiag: bool, rb, sb, acc, key):
    """Add one tile's contributions to acc[key] (``t1``) and, with block bounds rb/sb (jackknife), ``t2``/``t3``."""
    w = 2.0 if offdiag else 1.0
    if rb is None:
        acc[key + "1"] += w * _dot(G1, G2, diag)
        return
    t2, t3 = acc[key + "2"], acc[key + "3"]
    total = 0.0
    for b, r0, r1 in rb:
        part = _dot(G1[:, r0:r1], G2[:, r0:r1], diag)
        t2[..., b] += part
        total = total + part
    acc[key + "1"] += w * total
    if offdiag:
        cols = {b: (c0, c1) for b, c0, c1 in sb}
        G1t, G2t = G1.transpose(1, 2), G2.transpose(1, 2)
        for b, c0, c1 in sb:
            t2[..., b] += _dot(G1t[:, c0:c1], G2t[:, c0:c1], diag)
        for b, r0, r1 in rb:
            if b in cols:
                c0, c1 = cols[b]
                t3[..., b] += w * _dot(G1[:, r0:r1, c0:c1], G2[:, r0:r1, c0:c1], diag)
    else:
        for b, r0, r1 in rb:
            t3[..., b] += _dot(G1[:, r0:r1, r0:r1], G2[:, r0:r1, r0:r1], diag)


def _bounds(blk_sorted: torch.Tensor):
    """[(block, start, stop)] of a panel's rows sorted by block."""
    ids, counts = torch.unique_consecutive(blk_sorted, return_counts=True)
    out, s = [], 0
    for b, c in zip(ids.tolist(), counts.tolist()):
        out.append((b, s, s + c))
        s += c
    return out


def _row_terms(pa, pb, jk: bool, kept, N, usq, vsq, acc, self_a: bool, self_b: bool, debiased: bool):
    """Row quantities of a diagonal tile: full-data debiased sums and the jackknife's per-block sums."""
    xa = torch.stack([p.a for p in pa]) if debiased else None
    xb = torch.stack([p.a for p in pb]) if debiased else None
    if debiased:
        acc["ab"] += xa @ xb.T
        if self_a:
            acc["sa"] += xa.sum(1)
            acc["saa"] += (xa * xa).sum(1)
        if self_b:
            acc["sb"] += xb.sum(1)
            acc["sbb"] += (xb * xb).sum(1)
    if not jk:
        return
    onehot = (~kept).to(torch.float64)                              # t x B
    P = torch.stack([p.P for p in pa])                               # ba x t x B
    Q = torch.stack([p.P for p in pb])
    acc["pq"] += torch.einsum("itb,jtb->ijb", P, Q)
    Pd, Qd = (P * onehot).sum(2), (Q * onehot).sum(2)                # x_t . u_blk(t)
    acc["pqin"] += torch.einsum("it,jt,tb->ijb", Pd, Qd, onehot)
    if self_a:
        acc["ppx"] += (P * P).sum(1)
        acc["ppinx"] += (Pd * Pd) @ onehot
    if self_b:
        acc["qqy"] += (Q * Q).sum(1)
        acc["qqiny"] += (Qd * Qd) @ onehot
    if debiased:
        km = kept.to(torch.float64)
        A = (xa[:, :, None] + 2.0 * P / N + usq[:, None, :] / N ** 2) * km
        Bm = (xb[:, :, None] + 2.0 * Q / N + vsq[:, None, :] / N ** 2) * km
        acc["jab"] += torch.einsum("itb,jtb->ijb", A, Bm)
        if self_a:
            acc["jsa"] += A.sum(1)
            acc["jsaa"] += (A * A).sum(1)
        if self_b:
            acc["jsb"] += Bm.sum(1)
            acc["jsbb"] += (Bm * Bm).sum(1)


def _accumulators(La, Lb, B, dev) -> dict:
    z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
    acc = {"x1": z(La, Lb), "a1": z(La), "b1": z(Lb), "ab": z(La, Lb), "sa": z(La), "saa": z(La), "sb": z(Lb),
           "sbb": z(Lb)}
    if B:
        acc.update({"x2": z(La, Lb, B), "x3": z(La, Lb, B), "a2": z(La, B), "a3": z(La, B), "b2": z(Lb, B),
                    "b3": z(Lb, B), "pq": z(La, Lb, B), "pqin": z(La, Lb, B), "ppx": z(La, B), "ppinx": z(La, B),
                    "qqy": z(Lb, B), "qqiny": z(Lb, B), "jab": z(La, Lb, B), "jsa": z(La, B), "jsaa": z(La, B),
                    "jsb": z(Lb, B), "jsbb": z(Lb, B)})
    return acc


def _sub(acc: dict, Ia, Jb) -> dict:
    """Views of the accumulators restricted to a block pair (layer ranges are contiguous)."""
    ia, jb = slice(Ia[0], Ia[-1] + 1), slice(Jb[0], Jb[-1] + 1)
    out = {}
    for k, v in acc.items():
        if k in ("x1", "ab", "x2", "x3", "pq", "pqin", "jab"):
            out[k] = v[ia, jb]
        elif k in ("a1", "sa", "saa", "a2", "a3", "ppx", "ppinx", "jsa", "jsaa"):
            out[k] = v[ia]
        else:
            out[k] = v[jb]
    return out


def _jackknife_intervals(acc, U_a, U_b, nb, n, est_b, est_u, alpha, debiased):
    from .intervals import _finish

    N = (n - nb).to(torch.float64)                                    # B
    usq, vsq = (U_a * U_a).sum(2), (U_b * U_b).sum(2)                 # La x B, Lb x B
    xy = (acc["x1"][..., None] + acc["x3"] - 2 * acc["x2"] + usq[:, None] * vsq[None] / N ** 2
          - 2 * acc["pq"] / N + 2 * acc["pqin"] / N)
    xx = acc["a1"][:, None] + acc["a3"] - 2 * acc["a2"] + usq ** 2 / N ** 2 - 2 * acc["ppx"] / N + 2 * acc["ppinx"] / N
    yy = acc["b1"][:, None] + acc["b3"] - 2 * acc["b2"] + vsq ** 2 / N ** 2 - 2 * acc["qqy"] / N + 2 * acc["qqiny"] / N
    reps = {"biased": xy / torch.sqrt(xx[:, None] * yy[None])}
    if debiased:
        xy_u = debias_hsic(xy, acc["jab"], acc["jsa"][:, None], acc["jsb"][None], N)
        xx_u = debias_hsic(xx, acc["jsaa"], acc["jsa"], acc["jsa"], N)
        yy_u = debias_hsic(yy, acc["jsbb"], acc["jsb"], acc["jsb"], N)
        rep = xy_u / torch.sqrt(xx_u[:, None] * yy_u[None])
        reps["debiased"] = torch.where(N > 3, rep, torch.full_like(rep, float("nan")))
    methods = {"biased": (False, "jackknife (texts), centred on the estimate: expected biased CKA at this n"),
               "debiased": (True, "jackknife (texts), bias-corrected: population CKA")}
    out = {}
    for name, rep in reps.items():
        est = est_b if name == "biased" else est_u
        rep, est = rep.cpu(), est.cpu()
        La, Lb = est.shape
        fields = {f: torch.full((La, Lb), float("nan"), dtype=torch.float64) for f in ("low", "high", "centre", "se")}
        for i in range(La):
            for j in range(Lb):
                iv = _finish(float(est[i, j]), rep[i, j], alpha, methods[name][0], methods[name][1])
                for f in fields:
                    fields[f][i, j] = getattr(iv, f)
        out[name] = {"estimate": est, **fields, "n_blocks": int(rep.shape[-1]), "alpha": alpha,
                     "method": methods[name][1], "replicates": rep}
    return out


@torch.no_grad()
def cka_gram_blocked(src_a, src_b, *, debiased: bool = True, groups=None, jackknife: bool = False,
                     max_blocks: int = 100, seed: int = 0, alpha: float = 0.05, memory_budget=None,
                     compute_dtype: torch.dtype = torch.float32, device=None, plan: GramPlan | None = None,
                     progress: bool = False, log=None) -> GramCKA:
    """Biased (and debiased) linear CKA of all La x Lb layer pairs through Gram tiles within ``memory_budget``;
    with ``jackknife=True`` also the delete-a-block jackknife interval of every pair (texts = ``groups``, one id
    per row; None = each row its own text), equal to ``cka_jackknife`` on each pair."""
    from .intervals import jackknife_blocks

    src_a, src_b = _as_source(src_a), _as_source(src_b)
    if src_a.n_rows != src_b.n_rows:
        raise ValueError(f"the two sources must hold the same rows, got {src_a.n_rows} and {src_b.n_rows}")
    n, La, Lb = src_a.n_rows, src_a.n_layers, src_b.n_layers
    if n < 2:
        raise ValueError(f"CKA needs at least 2 rows; got n={n}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cd = compute_dtype
    debiased = bool(debiased and n > 3)
    blk, B, nb = None, 0, None
    if jackknife:
        blocks = jackknife_blocks(groups, n, max_blocks, seed)
        B = len(blocks)
        blk = torch.empty(n, dtype=torch.long)
        for b, rows in enumerate(blocks):
            blk[rows] = b
        nb = torch.bincount(blk, minlength=B).to(dev)
        blk = blk.to(dev)
    if plan is None:
        from .blocks import gemm_gflops

        plan = plan_gram(La, Lb, src_a.dim, src_b.dim, n, memory_budget, cd,
                         storage_bytes=getattr(src_a, "storage_bytes", 4), gflops=gemm_gflops(cd, dev),
                         jackknife_blocks=B)
    (log or logging.getLogger("reasoning_embed.hrsa").info)(plan.describe())
    _fixed_mmap_threshold()
    t0 = time.perf_counter()
    timings: dict = {}
    _GEMM_S[0] = 0.0
    ma, Ua = _means(src_a, dev, blk, B)
    mb, Ub = _means(src_b, dev, blk, B)
    timings["means_s"] = time.perf_counter() - t0
    acc = _accumulators(La, Lb, B, dev)
    orders, bounds, kept, N, usq, vsq = {}, {}, {}, None, None, None
    if B:
        N = (n - nb).to(torch.float64)
        usq, vsq = (Ua * Ua).sum(2), (Ub * Ub).sum(2)
        for s, e in plan.panels:
            o = torch.argsort(blk[s:e], stable=True)
            pos = torch.empty_like(o)
            pos[o] = torch.arange(e - s, device=dev)
            orders[s], bounds[s] = pos, _bounds(blk[s:e][o])
            kept[s] = blk[s:e][o][:, None] != torch.arange(B, device=dev)[None, :]
    bar = None
    T = len(plan.panels)
    n_pairs = len(plan.blocks_a) * len(plan.blocks_b)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_pairs * T * (T + 1) // 2, desc="hrsa CKA tiles", unit="tile")
    for ia, Ia in enumerate(plan.blocks_a):
        for jb, Jb in enumerate(plan.blocks_b):
            sub = _sub(acc, Ia, Jb)
            _block_pair(src_a, src_b, Ia, Jb, jb == 0, ia == 0, plan.panels, ma, mb, Ua, Ub, orders, bounds, kept,
                        N, usq[Ia[0]:Ia[-1] + 1] if B else None, vsq[Jb[0]:Jb[-1] + 1] if B else None, cd, dev,
                        debiased, sub, bar, plan.resident)
    if bar is not None:
        bar.close()
    timings["tiles_s"] = time.perf_counter() - t0 - timings["means_s"]
    biased = cka_ratio(acc["x1"], acc["a1"][:, None] * acc["b1"][None, :])
    unb = None
    if debiased:
        nf = torch.tensor(float(n), dtype=torch.float64, device=dev)
        num_u = debias_hsic(acc["x1"], acc["ab"], acc["sa"][:, None], acc["sb"][None, :], nf)
        hx_u = debias_hsic(acc["a1"], acc["saa"], acc["sa"], acc["sa"], nf)
        hy_u = debias_hsic(acc["b1"], acc["sbb"], acc["sb"], acc["sb"], nf)
        unb = cka_ratio(num_u, hx_u[:, None] * hy_u[None, :])
    jk = None
    if B:
        est_u = unb if unb is not None else torch.full_like(biased, float("nan"))
        jk = _jackknife_intervals(acc, Ua, Ub, nb, n, biased, est_u, alpha, debiased)
    timings["block_pairs_done"] = n_pairs
    timings["gram_gemm_s"] = _GEMM_S[0]
    return GramCKA(biased.cpu(), unb.cpu() if unb is not None else None, n, plan, time.perf_counter() - t0,
                   timings, jk)


def _block_pair(src_a, src_b, Ia, Jb, self_a, self_b, panels, ma, mb, Ua, Ub, orders, bounds, kept, N, usq, vsq,
                cd, dev, debiased, acc, bar, resident=False):
    """Every tile of one layer-block pair. ``self_a``: this pass also adds model A's self terms (first B block)."""
    jk = bool(orders)

    def read(src, layers, mean, U, s, e, into=None):
        return [_Panel(src, i, s, e, mean, orders.get(s), cd, dev, U if jk else None, debiased,
                       None if into is None else into[k, s:e]) for k, i in enumerate(layers)]

    held = None
    if resident:                # one allocation per model: thousands of panel-sized ones fragment the heap
        xa = torch.empty(len(Ia), src_a.n_rows, src_a.dim, dtype=cd, device=dev)
        xb = torch.empty(len(Jb), src_b.n_rows, src_b.dim, dtype=cd, device=dev)
        held = [(read(src_a, Ia, ma, Ua, s, e, xa), read(src_b, Jb, mb, Ub, s, e, xb)) for s, e in panels]
    for r, (rs, re_) in enumerate(panels):
        pa, pb = held[r] if resident else (read(src_a, Ia, ma, Ua, rs, re_), read(src_b, Jb, mb, Ub, rs, re_))
        _row_terms(pa, pb, jk, kept.get(rs), N, usq, vsq, acc, self_a, self_b, debiased)
        for s_, (ss, se) in enumerate(panels[r:]):
            off = s_ > 0
            o_s = orders.get(ss)
            hs = held[r + s_] if resident else (None, None)
            K = _tiles(src_a, Ia, pa, ss, se, ma, o_s, cd, dev, off, hs[0])
            Lt = _tiles(src_b, Jb, pb, ss, se, mb, o_s, cd, dev, off, hs[1])
            rb, sb = (bounds[rs], bounds[ss]) if jk else (None, None)
            _tile_terms(K, Lt, False, off, rb, sb, acc, "x")
            if self_a:
                _tile_terms(K, K, True, off, rb, sb, acc, "a")
            if self_b:
                _tile_terms(Lt, Lt, True, off, rb, sb, acc, "b")
            del K, Lt
            if bar is not None:
                bar.update(1)
        if not resident:
            for p in pa + pb:
                p.x = p.P = None


def _tiles(src, layers, panel_r, ss, se, mean, order, cd, dev, off: bool, panel_s=None) -> torch.Tensor:
    """Gram tiles K_i[R, S] (len(layers) x |R| x |S|) in ``cd``; panel S held, or read one layer at a time."""
    out = torch.empty(len(layers), panel_r[0].x.shape[0], se - ss, dtype=cd, device=dev)
    for k, layer in enumerate(layers):
        xr = panel_r[k].x
        if not off:
            xs = xr
        else:
            xs = panel_s[k].x if panel_s is not None else _Panel(src, layer, ss, se, mean, order, cd, dev).x
        t0 = time.perf_counter()
        torch.mm(xr, xs.T, out=out[k])
        _GEMM_S[0] += time.perf_counter() - t0          # CPU: the tile GEMMs alone (the benchmark's FLOP/s ratio)
    return out


# ------------------------------------------------------------------------------------------------ null
@dataclass
class NullPlan:
    blocks_a: list[list[int]]
    blocks_b: list[list[int]]
    n: int
    n_perm: int
    budget: int | None
    state_bytes: int
    flops: float
    est_seconds: float | None = None

    def describe(self) -> str:
        return (f"permutation-null plan: {len(self.blocks_a)} x {len(self.blocks_b)} layer blocks "
                f"({len(self.blocks_a[0])} x {len(self.blocks_b[0])} layers), full {self.n} x {self.n} Grams of a block "
                f"pair held, {self.n_perm} permutations; passes over the features: model A 1, model B "
                f"{len(self.blocks_a)}; " + plan_cost(self.state_bytes, self.budget, self.flops, self.est_seconds))


def plan_null(La, Lb, da, db, n, n_perm, budget=None, gflops: float | None = None, block_a=None, block_b=None):
    budget_b = parse_budget(budget)

    def state(ba, bb):
        return (ba + bb + 2) * n * n * 8 + n * max(da, db) * 16 + 8 * (n_perm + 2) * La * Lb + 8 * (La + Lb) * n

    best = None
    for ba in ([block_a] if block_a else range(La, 0, -1)):
        for bb in ([block_b] if block_b else range(Lb, 0, -1)):
            if budget_b is not None and state(ba, bb) > budget_b and not (block_a and block_b):
                continue
            nA = math.ceil(La / ba)
            flops = 2.0 * n * n * (La * da + nA * Lb * db) + 2.0 * La * Lb * n * n * (n_perm + 1)
            key = (nA * Lb, -ba * bb)
            if best is None or key < best[0]:
                best = (key, ba, bb, flops)
    if best is None:
        raise ValueError(f"memory_budget {budget!r} is too small for the permutation null over {n} rows: one layer "
                         f"pair's {n} x {n} Grams need at least {format_bytes(state(1, 1))}")
    _, ba, bb, flops = best
    return NullPlan(_split(La, ba), _split(Lb, bb), n, n_perm, budget_b, state(ba, bb), flops,
                    flops / (gflops * 1e9) if gflops else None)


def _full_grams(src, layers, mean, cd, dev, chunk: int = 4096):
    """Centred Grams (len x n x n, float64) and squared row norms of the values the GEMM sees."""
    n = src.n_rows
    G = torch.empty(len(layers), n, n, dtype=torch.float64, device=dev)
    a = torch.empty(len(layers), n, dtype=torch.float64, device=dev)
    for k, layer in enumerate(layers):
        x = torch.cat([_Panel(src, layer, s, min(n, s + chunk), mean, None, cd, dev).x for s in range(0, n, chunk)])
        G[k] = torch.mm(x, x.T) if cd == torch.float64 else torch.mm(x, x.T).to(torch.float64)
        v = x.to(torch.float64)
        a[k] = (v * v).sum(1)
        del x, v
    return G, a


@torch.no_grad()
def cka_null_blocked(src_a, src_b, groups=None, *, n_perm: int = 200, seed: int = 0, debiased: bool = False,
                     memory_budget=None, compute_dtype: torch.dtype = torch.float64, device=None,
                     plan: NullPlan | None = None, progress: bool = False, log=None):
    """Permutation null of the La x Lb linear CKA matrix, texts of B re-paired with texts of A (one permutation
    applied to every layer, the permutations of :func:`~reasoning_embed.hrsa.stats.group_permutations`).

    Returns ``(observed La x Lb, null n_perm x La x Lb, plan)``; ``null[:, i, j]`` equals
    ``cka_permutation_test(X_i, Y_j, groups, n_perm, seed, debiased).null``.
    """
    from .stats import group_permutations

    src_a, src_b = _as_source(src_a), _as_source(src_b)
    n, La, Lb = src_a.n_rows, src_a.n_layers, src_b.n_layers
    if src_b.n_rows != n:
        raise ValueError(f"the two sources must hold the same rows, got {n} and {src_b.n_rows}")
    if debiased and n <= 3:
        raise ValueError(f"the unbiased HSIC estimator needs n > 3 rows; got n={n}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if plan is None:
        from .blocks import gemm_gflops

        plan = plan_null(La, Lb, src_a.dim, src_b.dim, n, n_perm, memory_budget,
                         gflops=gemm_gflops(torch.float64, dev))
    (log or logging.getLogger("reasoning_embed.hrsa").info)(plan.describe())
    _fixed_mmap_threshold()
    ma, _ = _means(src_a, dev)
    mb, _ = _means(src_b, dev)
    observed = torch.empty(La, Lb, dtype=torch.float64)
    null = torch.empty(n_perm, La, Lb, dtype=torch.float64)
    nf = torch.tensor(float(n), dtype=torch.float64, device=dev)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan.blocks_a) * len(plan.blocks_b) * n_perm, desc="hrsa CKA null", unit="perm")
    for Ia in plan.blocks_a:
        K, a = _full_grams(src_a, Ia, ma, compute_dtype, dev)
        hx = (K * K).sum((1, 2))
        if debiased:
            hx = debias_hsic(hx, (a * a).sum(1), a.sum(1), a.sum(1), nf)
        Kf = K.reshape(len(Ia), -1)
        for Jb in plan.blocks_b:
            Lg, b = _full_grams(src_b, Jb, mb, compute_dtype, dev)
            hy = (Lg * Lg).sum((1, 2))
            if debiased:
                hy = debias_hsic(hy, (b * b).sum(1), b.sum(1), b.sum(1), nf)
            den = torch.sqrt(hx[:, None] * hy[None, :])
            Lf = Lg.reshape(len(Jb), -1)
            sl = (slice(Ia[0], Ia[-1] + 1), slice(Jb[0], Jb[-1] + 1))

            def stat(num, bp):
                if debiased:
                    num = debias_hsic(num, a @ bp.T, a.sum(1)[:, None], b.sum(1)[None, :], nf)
                return torch.where(den > 0, num / den, torch.full_like(num, float("nan"))).cpu()

            observed[sl] = stat(Kf @ Lf.T, b)
            perms, _, _ = group_permutations(groups, n, n_perm, seed)
            for k, p in enumerate(perms):
                p = p.to(dev)
                idx = (p[:, None] * n + p[None, :]).reshape(-1)
                Lp = torch.stack([Lf[j].index_select(0, idx) for j in range(len(Jb))])
                null[(k, *sl)] = stat(Kf @ Lp.T, b[:, p])
                del Lp, idx
                if bar is not None:
                    bar.update(1)
            del Lg, Lf
        del K, Kf
    if bar is not None:
        bar.close()
    return observed, null, plan
