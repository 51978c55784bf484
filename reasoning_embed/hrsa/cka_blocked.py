"""All-pairs linear CKA (biased and debiased) within a memory budget, in layer blocks and row chunks.

:class:`~reasoning_embed.hrsa.CKAAccumulator` holds the ``La x Lb x da x db`` cross-products of every
layer pair at once: 16 GB of float64 for two 29-layer models of width 1536. This engine computes the
same matrix from row *sources* it can read again (the feature cache on disk, or tensors), holding
only what ``memory_budget`` allows:

1. **means pass** (one read of each model): float64 column means ``m_i``, ``p_j`` of every layer;
2. **self pass** (one read of each model, in blocks of layers): ``Sxc_i = sum_t (x_t - m_i)(x_t - m_i)^T``
   per layer, reduced at once to the scalars the CKA needs (``||Sxc||_F^2``, and for the debiased
   form ``sum_t a_t``, ``sum_t a_t^2`` with ``a_t = ||x_t - m_i||^2``);
3. **cross passes** (one per block pair): ``Cc_ij = sum_t (x_it - m_i)(y_jt - p_j)^T`` for a block of
   A layers x a block of B layers, reduced at once to ``||Cc_ij||_F^2`` and ``sum_t a_it b_jt``.

Rows are centred with the exact means before any product (in float64, then cast), so row offsets
of any size cancel before the GEMMs; the GEMMs run in ``compute_dtype``: float32 by default (the
fast path: each row chunk's product is added into the float64 sums at once) or float64. From the
reduced statistics (Kornblith et al.'s feature-space form of the unbiased HSIC for the debiased
estimator):

    biased   = ||Cc||^2 / (||Sxc|| ||Syc||)
    debiased = h(Cc) / sqrt(h(Sxc) h(Syc)),  h(M) = ||M||^2 - n/(n-2) sum_t a_t b_t + (sum a)(sum b)/((n-1)(n-2))

A block pair's state is ``|Ia| |Jb| da db`` float64s plus one row chunk of both blocks; :func:`plan_blocks` picks the blocks and the chunk so that this
fits the budget with the fewest passes over the sources. The same code runs on a CUDA device
(``device=``): sources are read on the CPU, chunks moved to the device.

The tests check equality with :class:`CKAAccumulator` (float64) to 1e-10 relative for every
blocking, and bound the float32 path against float64 on inputs with massive activations.
"""

from __future__ import annotations

import time

import torch

__all__ = ["RowSource", "TensorSource", "IndexedSource", "BlockPlan", "BlockedCKA", "parse_budget", "plan_blocks",
           "cka_matrix_blocked", "gemm_gflops"]

# re-exported: callers and tests name them from here
from .blocks import (BlockPlan, IndexedSource, RowSource, TensorSource, _split, cka_ratio,  # noqa: F401
                     gemm_gflops, parse_budget, plan_blocks)
from .cka import debias_hsic


# ---------------------------------------------------------------------------------------- engine
class BlockedCKA:
    """The result of :func:`cka_matrix_blocked`, with the interface of a finished CKAAccumulator
    (``compute(debiased)``, ``n``, ``track_debiased``)."""

    def __init__(self, biased: torch.Tensor, debiased: torch.Tensor | None, n: int, plan: BlockPlan,
                 seconds: float, timings: dict | None = None):
        self._biased, self._debiased = biased, debiased
        self.n, self.plan, self.seconds, self.timings = n, plan, seconds, timings or {}
        self.track_debiased = debiased is not None
        self.jackknife = None                       # the Gram route's result carries the jackknife

    def compute(self, debiased: bool = False) -> torch.Tensor:
        if not debiased:
            return self._biased.clone()
        if self._debiased is None:
            raise ValueError("this CKA was computed with debiased=False")
        if self.n <= 3:
            raise ValueError(f"the unbiased HSIC estimator needs n > 3 rows; got n={self.n}")
        return self._debiased.clone()


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def _means(src: RowSource, chunk: int, device) -> torch.Tensor:
    out = torch.zeros(src.n_layers, src.dim, dtype=torch.float64, device=device)
    for s, e in _chunks(src.n_rows, chunk):
        for layer in range(src.n_layers):
            out[layer] += src.read(layer, s, e).to(device=device, dtype=torch.float64).sum(0)
    return out / max(1, src.n_rows)


def _centred(src: RowSource, layers, s, e, mean, cd, device, want_norms: bool):
    """Rows s:e of ``layers``, centred in float64, as one ``compute_dtype`` stack (+ squared norms)."""
    x = torch.empty(len(layers), e - s, src.dim, dtype=cd, device=device)
    a = torch.empty(len(layers), e - s, dtype=torch.float64, device=device) if want_norms else None
    for k, layer in enumerate(layers):
        t = src.read(layer, s, e).to(device=device, dtype=torch.float64, copy=True)   # never the source itself
        t -= mean[layer]
        x[k] = t
        if want_norms:                              # from the values the GEMMs see: one consistent data set
            if cd != torch.float64:
                t.copy_(x[k])
            a[k] = t.square_().sum(1)
        del t
    return x, a


class _Sums:
    """float64 sums of GEMM products; in the fast path each chunk's product is formed in ``cd`` and added at once
    (no long float32 running sums: their rounding would grow with the number of chunks)."""

    def __init__(self, shape, cd, device):
        self.total = torch.zeros(*shape, dtype=torch.float64, device=device)
        self.tmp = torch.empty(*shape[-2:], dtype=cd, device=device) if cd != torch.float64 else None

    def addmm(self, index, a, b) -> None:
        if self.tmp is None:
            self.total[index].addmm_(a, b)
        else:
            torch.mm(a, b, out=self.tmp)
            self.total[index] += self.tmp


def _self_terms(src, mean, block, chunk, cd, device, debiased, bar):
    """Per layer: ||Sxc||_F^2, sum_t a_t, sum_t a_t^2."""
    L = src.n_layers
    hh, sa, saa = (torch.zeros(L, dtype=torch.float64, device=device) for _ in range(3))
    for layers in _split(L, block):
        S = _Sums((len(layers), src.dim, src.dim), cd, device)
        for s, e in _chunks(src.n_rows, chunk):
            x, a = _centred(src, layers, s, e, mean, cd, device, debiased)
            for k in range(len(layers)):
                S.addmm(k, x[k].T, x[k])
            if debiased:
                sa[layers] += a.sum(1)
                saa[layers] += (a * a).sum(1)
            del x, a
            if bar is not None:
                bar.update(e - s)
        hh[layers] = torch.linalg.matrix_norm(S.total) ** 2
        del S
    return hh, sa, saa


def _cross_terms(src_a, src_b, ma, mb, plan, cd, device, debiased, bar, block_pairs=None):
    """||Cc_ij||_F^2 and sum_t a_it b_jt for every layer pair, block pair by block pair."""
    La, Lb, n = src_a.n_layers, src_b.n_layers, src_a.n_rows
    num = torch.full((La, Lb), float("nan"), dtype=torch.float64, device=device)
    ab = torch.zeros(La, Lb, dtype=torch.float64, device=device)
    for Ia, Jb in [(Ia, Jb) for Ia in plan.blocks_a for Jb in plan.blocks_b][:block_pairs]:
        C = _Sums((len(Ia), len(Jb), src_a.dim, src_b.dim), cd, device)
        for s, e in _chunks(n, plan.row_chunk):
            x, a = _centred(src_a, Ia, s, e, ma, cd, device, debiased)
            y, b = _centred(src_b, Jb, s, e, mb, cd, device, debiased)
            for i in range(len(Ia)):
                xt = x[i].T
                for j in range(len(Jb)):
                    C.addmm((i, j), xt, y[j])
            if debiased:
                ab[Ia[0]:Ia[-1] + 1, Jb[0]:Jb[-1] + 1] += a @ b.T
            del x, y, a, b
            if bar is not None:
                bar.update(e - s)
        num[Ia[0]:Ia[-1] + 1, Jb[0]:Jb[-1] + 1] = torch.linalg.matrix_norm(C.total) ** 2
        del C
    return num, ab


@torch.no_grad()
def cka_matrix_blocked(src_a, src_b, *, debiased: bool = True, memory_budget=None,
                       compute_dtype: torch.dtype = torch.float32, device=None, plan: BlockPlan | None = None,
                       progress: bool = False, log=None, block_pairs: int | None = None, route: str = "auto",
                       jackknife: bool = False, groups=None, max_blocks: int = 100, seed: int = 0,
                       alpha: float = 0.05):
    """Biased (and debiased) linear CKA of all La x Lb layer pairs within ``memory_budget``.

    ``src_a``/``src_b``: :class:`RowSource` (e.g. a feature-cache reader) or ``L x n x d`` tensors.
    ``compute_dtype``: float32 (default, float64 accumulation) or float64. ``log``: a callable
    that receives the plan's description before the work starts (default: the module logger).
    ``block_pairs``: compute only the first N block pairs, the other entries stay NaN (benchmarks).
    ``route``: ``auto`` takes the feature-space blocks or the Gram tiles (:mod:`.cka_gram`), whichever the plan
    estimates faster; ``jackknife=True`` (Gram route) adds every pair's delete-a-block jackknife interval over
    the texts ``groups`` (``result.jackknife``). ``plan`` may be a :class:`BlockPlan` or a ``GramPlan``.
    """
    import logging

    from .cka_gram import choose_plan, cka_gram_blocked

    src_a = src_a if hasattr(src_a, "read") else TensorSource(src_a)
    src_b = src_b if hasattr(src_b, "read") else TensorSource(src_b)
    if src_a.n_rows != src_b.n_rows:
        raise ValueError(f"the two sources must hold the same rows, got {src_a.n_rows} and {src_b.n_rows}")
    n = src_a.n_rows
    if n < 2:
        raise ValueError(f"CKA needs at least 2 rows; got n={n}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cd = compute_dtype
    if plan is None:
        B = 0
        if jackknife:
            from .intervals import jackknife_blocks

            B = len(jackknife_blocks(groups, n, max_blocks, seed))
        plan = choose_plan(src_a.n_layers, src_b.n_layers, src_a.dim, src_b.dim, n, memory_budget, cd,
                           storage_bytes=getattr(src_a, "storage_bytes", 4), gflops=gemm_gflops(cd, dev),
                           route=route, jackknife_blocks=B)
    if getattr(plan, "route", "feature") == "gram":
        return cka_gram_blocked(src_a, src_b, debiased=debiased, groups=groups, jackknife=jackknife,
                                max_blocks=max_blocks, seed=seed, alpha=alpha, compute_dtype=cd, device=dev,
                                plan=plan, progress=progress, log=log)
    if jackknife:
        raise ValueError("the jackknife of the CKA matrix runs on the Gram route: pass route='gram' or plan=None")
    (log or logging.getLogger("reasoning_embed.hrsa").info)(plan.describe())
    debiased = bool(debiased and n > 3)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = n * (2 + len(plan.blocks_a) * len(plan.blocks_b))
        bar = tqdm(total=total, desc="hrsa CKA blocks", unit="row", unit_scale=True)
    chunk, timings = plan.row_chunk, {}

    def tick(name, t):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings[name] = time.perf_counter() - t
        return time.perf_counter()

    t = time.perf_counter()
    ma, mb = _means(src_a, chunk, dev), _means(src_b, chunk, dev)
    t = tick("means_s", t)
    hx, sa, saa = _self_terms(src_a, ma, plan.self_block_a, chunk, cd, dev, debiased, bar)
    hy, sb, sbb = _self_terms(src_b, mb, plan.self_block_b, chunk, cd, dev, debiased, bar)
    t = tick("self_s", t)
    num, ab = _cross_terms(src_a, src_b, ma, mb, plan, cd, dev, debiased, bar, block_pairs)
    tick("cross_s", t)
    n_pairs = len(plan.blocks_a) * len(plan.blocks_b)
    timings["block_pairs_done"] = min(n_pairs, block_pairs or n_pairs)
    if bar is not None:
        bar.close()
    biased = cka_ratio(num, hx[:, None] * hy[None, :]).cpu()
    unbiased = None
    if debiased:
        num_u = debias_hsic(num, ab, sa[:, None], sb[None, :], float(n))
        hx_u, hy_u = debias_hsic(hx, saa, sa, sa, float(n)), debias_hsic(hy, sbb, sb, sb, float(n))
        unbiased = cka_ratio(num_u, hx_u[:, None] * hy_u[None, :]).cpu()
    return BlockedCKA(biased, unbiased, n, plan, time.perf_counter() - t0, timings)
