"""Streaming linear CKA for all layer pairs of two models at once.

:class:`CKAAccumulator` takes row batches (tokens) of every layer of model A (``La x b x da``) and
of model B (``Lb x b x db``) and keeps float64 sufficient statistics, never the rows themselves.
Its memory is fixed by the layer shapes, not by the token count:

    8 * (La*Lb*da*db  +  La*da^2 + Lb*db^2  +  O(La*Lb*(da+db)))  bytes
    (plus a ``compute_dtype`` copy of the La*Lb*da*db block when that is not float64).

For 13 layers of d=512 that is about 0.36 GB; for 29 layers of d=1536 it would be 16 GB: for large
models :func:`~reasoning_embed.hrsa.cka_blocked.cka_matrix_blocked` computes the same matrix within a
memory budget (layer blocks and row chunks over features it can read again, e.g. the feature cache).

Per batch the work is one ``d x d`` GEMM per layer for the self terms (computed once per layer,
not once per pair) and ``La`` batched GEMMs for the ``La x Lb`` cross terms ``X_i^T Y_j``: in all
(La*Lb + La + Lb) GEMMs of n x d x d, against 3*La*Lb for per-pair code that recomputes the self
terms (so at most 2.6x fewer flops for 13 x 13 layers; the extra debiased statistics cost ~1/d of
that).

Sufficient statistics (rows shifted by a fixed per-layer vector, the first batch's mean, which
leaves both CKA forms unchanged and keeps the float64 sums well conditioned):
``C_ij = sum_t x_it y_jt^T``, ``S_i = sum_t x_it x_it^T``, ``s_i = sum_t x_it``, and for the
debiased form with ``a_it = ||x_it||^2``, ``b_jt = ||y_jt||^2``: ``sum a``, ``sum a^2``,
``sum_t a_it x_it``, ``sum_t a_it b_jt``, ``sum_t a_it y_jt``, ``sum_t b_jt x_it``.

From them, with ``m = s_X/n``, ``p = s_Y/n`` (column means):

* centred cross-covariance ``Cc = C - n m p^T`` and self terms ``Sc = S - n m m^T``, so
  biased CKA = ``||Cc||^2 / (||Sc_X|| ||Sc_Y||)``;
* the squared row norms of the *centred* rows ``a'_t = a_t - 2 x_t.m + |m|^2`` enter the unbiased
  HSIC (Song et al. 2012, in Kornblith et al.'s feature-space form
  ``||Cc||^2 - n/(n-2) sum_t a'_t b'_t + (sum a')(sum b')/((n-1)(n-2))``) through
  ``sum_t a'_t b'_t = sum ab - 2 p.(sum a y) - 2 m.(sum b x) + 4 m^T C p + |p|^2 sum a
  + |m|^2 sum b - 3 n |m|^2 |p|^2`` and ``sum a' = sum a - n |m|^2``.

The tests check streaming == one-shot feature form == Gram-space form (Kornblith's unbiased
centring for the debiased estimator) for both estimators, and the debiased one-shot form ==
Song et al.'s literal formula on uncentred Gram matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._tensor import as_f64
from .cka import debias_hsic

__all__ = ["CKAAccumulator", "cka_matrix"]


def _as_stack(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"{name} must be (layers, rows, dim) or (rows, dim), got shape {tuple(x.shape)}")
    return x


class CKAAccumulator:
    """Accumulate linear-CKA statistics over row batches for all La x Lb layer pairs.

    Args:
        debiased: also keep the (cheap) extra statistics for the unbiased-HSIC (debiased) CKA.
        compute_dtype: dtype of the per-batch GEMMs. ``torch.float32`` (default, the fast path)
            is about 2x faster on CPUs: the rows are shifted in float64, then multiplied in
            float32, the cross-term partial sums flushed into float64 every ``flush_rows`` rows,
            every other statistic accumulated in float64 (difference to the float64 mode: ~1e-9
            on benchmarks/bench_hrsa_cka.py, 13 x 13 layers, 20k rows; the tests bound it on
            inputs with massive activations). ``torch.float64`` is exact to ~1e-12.
        flush_rows: rows accumulated in ``compute_dtype`` before flushing into float64.

    ``update(xb, yb)``: ``xb`` is ``La x b x da`` (or ``b x da``), ``yb`` is ``Lb x b x db``, the
    same b rows (tokens) in both. ``compute(debiased=False)`` returns the ``La x Lb`` float64 CKA
    matrix and may be called at any time (it does not consume the state).
    """

    def __init__(self, debiased: bool = True, compute_dtype: torch.dtype = torch.float32,
                 flush_rows: int = 4096):
        self.track_debiased = debiased
        self.compute_dtype = compute_dtype
        self.flush_rows = int(flush_rows)
        self.n = 0
        self._rows_since_flush = 0
        self._init = False

    # ------------------------------------------------------------------ state
    def _allocate(self, La: int, Lb: int, da: int, db: int, device) -> None:
        z = lambda *s, dtype=torch.float64: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        self.shape = (La, Lb, da, db)
        self.C = z(La, Lb, da, db)
        self._Cpart = z(La, Lb, da, db, dtype=self.compute_dtype) if self.compute_dtype != torch.float64 else None
        self.Sx, self.Sy = z(La, da, da), z(Lb, db, db)
        self.sx, self.sy = z(La, da), z(Lb, db)
        if self.track_debiased:
            self.suma, self.sumb = z(La), z(Lb)
            self.suma2, self.sumb2 = z(La), z(Lb)
            self.xa, self.yb = z(La, da), z(Lb, db)       # sum_t a_t x_t,  sum_t b_t y_t
            self.ab = z(La, Lb)                           # sum_t a_it b_jt
            self.ya = z(La, Lb, db)                       # sum_t a_it y_jt
            self.xb = z(La, Lb, da)                       # sum_t b_jt x_it
        self._init = True

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the accumulator's statistics (independent of the number of rows)."""
        if not self._init:
            return 0
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, xb, yb) -> None:
        x, y = _as_stack(xb, "xb"), _as_stack(yb, "yb")
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"xb and yb must hold the same rows, got {x.shape[1]} and {y.shape[1]}")
        La, b, da = x.shape
        Lb, _, db = y.shape
        if b == 0:
            return
        cd = self.compute_dtype
        if not self._init:
            self._allocate(La, Lb, da, db, x.device)
            # Fixed shift = first batch's mean: CKA (both forms) is shift-invariant, and sums of
            # nearly centred rows do not cancel catastrophically at the end.
            self.mux = x.to(torch.float64).mean(1, keepdim=True)
            self.muy = y.to(torch.float64).mean(1, keepdim=True)
        elif self.shape != (La, Lb, da, db):
            raise ValueError(f"batch shapes {(La, Lb, da, db)} differ from the first batch's {self.shape}")

        # Shift in float64 (a large offset cancels before any rounding), then one copy in
        # compute_dtype feeds the GEMMs; every other statistic is taken from the same (rounded)
        # values in float64, so all statistics describe exactly the same data.
        xc = (x.to(torch.float64) - self.mux).to(cd)
        yc = (y.to(torch.float64) - self.muy).to(cd)

        # Cross terms: La batched GEMMs (each Lb x (da x b) @ (b x db)), written in place.
        target = self.C if self._Cpart is None else self._Cpart
        for i in range(La):
            target[i].baddbmm_(xc[i].mT.expand(Lb, da, b), yc)
        # Self terms: once per layer, not once per pair.
        self.Sx += torch.bmm(xc.mT, xc)
        self.Sy += torch.bmm(yc.mT, yc)

        x64 = xc if cd == torch.float64 else xc.to(torch.float64)
        y64 = yc if cd == torch.float64 else yc.to(torch.float64)
        self.sx += x64.sum(1)
        self.sy += y64.sum(1)
        if self.track_debiased:
            a = torch.linalg.vector_norm(x64, dim=-1) ** 2          # La x b, ||x_t||^2
            bb = torch.linalg.vector_norm(y64, dim=-1) ** 2         # Lb x b
            self.suma += a.sum(1)
            self.sumb += bb.sum(1)
            self.suma2 += (a * a).sum(1)
            self.sumb2 += (bb * bb).sum(1)
            self.xa += torch.bmm(a.unsqueeze(1), x64).squeeze(1)
            self.yb += torch.bmm(bb.unsqueeze(1), y64).squeeze(1)
            self.ab += a @ bb.T
            self.ya += torch.bmm(a.expand(Lb, La, b), y64).transpose(0, 1)     # (Lb,La,db) -> (La,Lb,db)
            self.xb += torch.bmm(bb.expand(La, Lb, b), x64)                    # (La,Lb,da)

        self.n += b
        self._rows_since_flush += b
        if self._Cpart is not None and self._rows_since_flush >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if self._Cpart is not None and self._rows_since_flush > 0:
            for i in range(self.C.shape[0]):       # per layer: no full-size float64 temporary
                self.C[i] += self._Cpart[i]
            self._Cpart.zero_()
        self._rows_since_flush = 0

    # ---------------------------------------------------------------- compute
    @torch.no_grad()
    def compute(self, debiased: bool = False) -> torch.Tensor:
        """Return the La x Lb CKA matrix (float64) of the rows seen so far."""
        if not self._init:
            raise RuntimeError("no rows accumulated yet")
        n = self.n
        if debiased:
            if not self.track_debiased:
                raise ValueError("this accumulator was created with debiased=False")
            if n <= 3:
                raise ValueError(f"the unbiased HSIC estimator needs n > 3 rows; got n={n}")
        elif n < 2:
            raise ValueError(f"CKA needs at least 2 rows; got n={n}")
        self._flush()
        La, Lb, da, db = self.shape
        m, p = self.sx / n, self.sy / n                   # column means (of shifted rows)
        Sxc = self.Sx - n * m[:, :, None] * m[:, None, :]
        Syc = self.Sy - n * p[:, :, None] * p[:, None, :]
        num = torch.empty(La, Lb, dtype=torch.float64, device=self.C.device)
        mCp = torch.empty_like(num)
        for i in range(La):                               # one Lb x da x db temporary at a time
            Ci = self.C[i]
            num[i] = torch.linalg.matrix_norm(Ci - n * m[i][None, :, None] * p[:, None, :]) ** 2
            mCp[i] = torch.einsum("d,jde,je->j", m[i], Ci, p)
        hx = torch.linalg.matrix_norm(Sxc) ** 2           # ||Xc^T Xc||_F^2 per layer
        hy = torch.linalg.matrix_norm(Syc) ** 2
        if debiased:
            mm, pp = (m * m).sum(1), (p * p).sum(1)      # |m|^2, |p|^2
            sa = self.suma - n * mm                       # sum_t a'_t (centred rows)
            sb = self.sumb - n * pp
            sab = (self.ab - 2 * torch.einsum("ijd,jd->ij", self.ya, p)
                   - 2 * torch.einsum("ijd,id->ij", self.xb, m) + 4 * mCp
                   + pp[None, :] * self.suma[:, None] + mm[:, None] * self.sumb[None, :]
                   - 3 * n * mm[:, None] * pp[None, :])
            saa = (self.suma2 - 4 * (m * self.xa).sum(1) + 4 * torch.einsum("ld,lde,le->l", m, self.Sx, m)
                   + 2 * mm * self.suma - 3 * n * mm * mm)
            sbb = (self.sumb2 - 4 * (p * self.yb).sum(1) + 4 * torch.einsum("ld,lde,le->l", p, self.Sy, p)
                   + 2 * pp * self.sumb - 3 * n * pp * pp)
            num = debias_hsic(num, sab, sa[:, None], sb[None, :], n)
            hx, hy = debias_hsic(hx, saa, sa, sa, n), debias_hsic(hy, sbb, sb, sb, n)
        den2 = hx[:, None] * hy[None, :]
        out = num / torch.sqrt(den2.clamp_min(0))
        return torch.where(den2 > 0, out, torch.full_like(out, float("nan")))


def _rows(Xs, name: str):
    """Stacked tensor (L, n, d) or sequence of (n, d) tensors/arrays -> (L, n, row-slicer)."""
    if isinstance(Xs, torch.Tensor) and Xs.ndim == 3:
        return Xs.shape[0], Xs.shape[1], lambda s: Xs[:, s]
    if isinstance(Xs, torch.Tensor) and Xs.ndim == 2:
        return 1, Xs.shape[0], lambda s: Xs[s].unsqueeze(0)
    if isinstance(Xs, Sequence) or hasattr(Xs, "__len__"):
        layers = [as_f64(x, name) for x in Xs]
        if len({x.shape[0] for x in layers}) != 1:
            raise ValueError(f"all layers of {name} must have the same rows")
        return len(layers), layers[0].shape[0], lambda s: torch.stack([x[s] for x in layers])
    raise TypeError(f"{name}: expected a (L, n, d) tensor or a sequence of (n, d) arrays")


def cka_matrix(Xs, Ys, debiased: bool = False, chunk_size: int = 8192) -> torch.Tensor:
    """Linear CKA for all La x Lb layer pairs (float64), equal to :func:`linear_cka` per pair.

    ``Xs``: ``La x n x da`` tensor or a list of ``n x da`` arrays (likewise ``Ys``; layer counts
    and widths may differ, rows must match). Runs :class:`CKAAccumulator` over row chunks, so
    self terms are computed once per layer and cross terms as batched GEMMs.
    """
    La, n, getx = _rows(Xs, "Xs")
    Lb, ny, gety = _rows(Ys, "Ys")
    if n != ny:
        raise ValueError(f"Xs and Ys must have the same rows, got {n} and {ny}")
    acc = CKAAccumulator(debiased=debiased, compute_dtype=torch.float64)
    for start in range(0, n, chunk_size):
        s = slice(start, min(n, start + chunk_size))
        acc.update(getx(s), gety(s))
    return acc.compute(debiased=debiased)
