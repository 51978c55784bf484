"""The one learning-rate schedule (transformers' cosine with warm-up): its warm-up convention, pinned."""

import math

import pytest
import torch

from reasoning_embed.utils.schedule import cosine_with_warmup, warmup_steps


def _lrs(total, warmup, min_lr_ratio=0.0, peak=2.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = cosine_with_warmup(opt, total, warmup, min_lr_ratio)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])  # the lr the next optimizer step uses
        opt.step()
        sched.step()
    return out


def test_warmup_convention():
    lr = _lrs(total=100, warmup=10)
    assert lr[0] == pytest.approx(0.2)                 # step 0 already updates: (0 + 1) / warmup of the peak
    assert lr[4] == pytest.approx(1.0)                 # linear: half the peak half-way through warm-up
    assert lr[9] == pytest.approx(2.0)                 # the last warm-up step runs at the peak
    assert lr[10] == pytest.approx(2.0)                # the cosine starts at the peak
    assert lr[55] == pytest.approx(1.0)                # half-way through the decay: half the peak
    assert lr[100] == pytest.approx(0.0, abs=1e-12)    # the end: zero
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_floor_and_no_warmup():
    lr = _lrs(total=40, warmup=0, min_lr_ratio=0.1)
    assert lr[0] == pytest.approx(2.0) and lr[40] == pytest.approx(0.2)
    assert lr[20] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))


def test_warmup_steps_from_ratio():
    assert warmup_steps(1000, 0.03) == 30 and warmup_steps(10, 0.03) == 1 and warmup_steps(10, 0.0) == 0
