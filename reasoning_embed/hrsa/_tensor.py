"""Small input helpers shared by the HRSA metrics (not public API).

Every metric accepts torch tensors or numpy arrays and works in float64: inputs are converted
once here, on the device they came from.
"""

from __future__ import annotations

import numpy as np
import torch


def as_f64(x, name: str = "X", ndim: int | None = 2) -> torch.Tensor:
    """Return ``x`` as a float64 torch tensor (same device if already a tensor)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = t.to(torch.float64) if t.dtype != torch.float64 else t
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def same_rows(X: torch.Tensor, Y: torch.Tensor) -> int:
    """Check X and Y describe the same rows (tokens or texts); return n."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same rows, got n={X.shape[0]} and n={Y.shape[0]}")
    return int(X.shape[0])


def center(X: torch.Tensor) -> torch.Tensor:
    """Column-centre (subtract the mean row); returns a new tensor."""
    return X - X.mean(dim=0, keepdim=True)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
