"""The learning-rate schedule of every training loop here (contrastive training, the foundry's pre-training):
transformers' cosine schedule with linear warm-up.

Convention (transformers', pinned by tests): the learning-rate factor at optimizer step ``s`` is ``s / warmup``
during warm-up (0 at step 0: the first update is a no-op; 1 at step ``warmup``), then a half cosine from 1 down
to ``min_lr_ratio`` at ``total_steps``.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length for a ratio of the run: at least one step when the ratio is positive."""
    return max(1, int(math.ceil(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0


def cosine_with_warmup(optimizer, total_steps: int, warmup: int, min_lr_ratio: float = 0.0):
    """A ``LambdaLR``: linear warm-up over ``warmup`` steps, then cosine to ``min_lr_ratio`` x the peak."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=int(warmup),
                                                       num_training_steps=int(total_steps),
                                                       min_lr_rate=float(min_lr_ratio))
