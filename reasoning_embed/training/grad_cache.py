"""Replaying a chunk's random state, so GradCache's second (with-grad) pass sees the same dropout masks."""

from __future__ import annotations

import torch


class RandomState:
    """Captures CPU and CUDA RNG states at construction; ``with state:`` restores them for its block."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=list(range(len(self.cuda))) if self.cuda else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def split_features(feats: dict, size: int) -> list[dict]:
    n = feats["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in feats.items()} for i in range(0, n, size)]
