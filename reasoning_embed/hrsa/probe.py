"""Cross-model linear probe (function level): is the linear readout the same?

A probe (standardise + logistic regression; ridge for regression) is trained on model A's
embeddings and evaluated on A's test rows (native), on B's test rows unchanged through A's
standardiser and probe (raw transfer), and on B's test rows mapped into A's space by an
orthogonal Procrustes map fitted on the *train* rows only (aligned transfer). B's own probe,
chance (majority class / predicting the train mean) and a shuffled-label control are reported
alongside, because raw transfer mostly tests whether the two bases are shared: a rotated copy of
A gives chance raw transfer while CKA = k-NN = 1, and alignment restores native accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import to_numpy

__all__ = ["ProbeTransferResult", "linear_probe_transfer", "stratified_split"]


@dataclass
class ProbeTransferResult:
    metric: str               # "accuracy" (classification) or "r2" (regression)
    native: float             # A's probe on A's test rows
    raw_transfer: float       # A's probe (and standardiser) on B's test rows, unchanged
    aligned_transfer: float   # A's probe on B's test rows after Procrustes B -> A fitted on train rows
    b_own: float              # B's own probe on B's test rows
    chance: float             # majority-class rate of the test labels (r2 of the train mean)
    shuffled: float           # A's probe trained on permuted train labels, on A's test rows


def _make_probe(task: str, seed: int, C: float, alpha: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classification":
        est = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    elif task == "regression":
        est = Ridge(alpha=alpha)
    else:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    return make_pipeline(StandardScaler(), est)


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _procrustes_map(B: np.ndarray, A: np.ndarray):
    """Orthogonal map of centred B rows onto centred A rows (fit rows only); returns a function."""
    mb, ma = B.mean(0), A.mean(0)
    U, _, Vt = np.linalg.svd((B - mb).T @ (A - ma), full_matrices=False)
    O = U @ Vt
    return lambda Z: (Z - mb) @ O + ma


def linear_probe_transfer(A_train, y_train, A_test, y_test, B_train, B_test,
                          task: str = "classification", seed: int = 0, C: float = 1.0,
                          alpha: float = 1.0, max_iter: int = 5000) -> ProbeTransferResult:
    """Train on A, report native, raw / aligned transfer to B, B's own probe, chance, shuffled.

    Rows of ``A_train``/``B_train`` (and ``A_test``/``B_test``) are the same texts. Raw transfer
    needs equal widths; aligned transfer maps B to A with Procrustes fitted on the train rows
    (so it needs n_train >= d for an identifiable map).
    """
    A_tr, A_te = to_numpy(A_train).astype(np.float64), to_numpy(A_test).astype(np.float64)
    B_tr, B_te = to_numpy(B_train).astype(np.float64), to_numpy(B_test).astype(np.float64)
    y_tr, y_te = to_numpy(y_train), to_numpy(y_test)
    if task == "regression":
        y_tr, y_te = y_tr.astype(np.float64), y_te.astype(np.float64)
    if not (len(A_tr) == len(B_tr) == len(y_tr) and len(A_te) == len(B_te) == len(y_te)):
        raise ValueError("A/B/labels must have matching rows in train and in test")

    probe_a = _make_probe(task, seed, C, alpha, max_iter).fit(A_tr, y_tr)
    native = _score(task, y_te, probe_a.predict(A_te))
    raw = _score(task, y_te, probe_a.predict(B_te)) if B_te.shape[1] == A_te.shape[1] else float("nan")
    to_a = _procrustes_map(B_tr, A_tr)
    aligned = _score(task, y_te, probe_a.predict(to_a(B_te)))
    probe_b = _make_probe(task, seed, C, alpha, max_iter).fit(B_tr, y_tr)
    b_own = _score(task, y_te, probe_b.predict(B_te))
    rng = np.random.default_rng(seed)
    probe_s = _make_probe(task, seed, C, alpha, max_iter).fit(A_tr, rng.permutation(y_tr))
    shuffled = _score(task, y_te, probe_s.predict(A_te))
    if task == "classification":
        vals, counts = np.unique(y_tr, return_counts=True)
        chance = float(np.mean(y_te == vals[np.argmax(counts)]))   # majority class of train, on test
        metric = "accuracy"
    else:
        chance = _score(task, y_te, np.full_like(y_te, y_tr.mean()))
        metric = "r2"
    return ProbeTransferResult(metric=metric, native=native, raw_transfer=raw, aligned_transfer=aligned,
                               b_own=b_own, chance=chance, shuffled=shuffled)


def stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Split indices into len(fractions) parts, stratified by label (sorted index tensors).

    Each class is shuffled and cut by largest-remainder rounding of its size times the
    fractions, so class proportions match in every part up to one row per class.
    """
    y = to_numpy(labels)
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) < 2 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        raw = fr * len(idx)
        cnt = np.floor(raw).astype(int)
        rem = len(idx) - cnt.sum()
        cnt[np.argsort(-(raw - cnt), kind="stable")[:rem]] += 1
        for p, chunk in zip(parts, np.split(idx, np.cumsum(cnt)[:-1])):
            p.append(chunk)
    return tuple(torch.from_numpy(np.sort(np.concatenate(p))) for p in parts)
