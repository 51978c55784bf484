"""Honest training throughput: device-synchronised step time, useful vs computed tokens, and live MFU.

CUDA runs asynchronously, so a step timed without ``torch.cuda.synchronize()`` measures how fast work was
queued, not done. Useful tokens are the attended (non-padding) ones; computed tokens are every position the
model ran over (padding included). Model FLOPs count useful tokens only, each with ``4 N + 2 N_trainable``
(forward 2N, input gradients 2N, weight gradients 2N for trainable weights; N = non-embedding parameters)
plus bidirectional attention, ``12 d L s`` per token of a row of ``s`` tokens (forward + backward). The
re-embedding pass of gradient caching and activation recomputation are not model FLOPs (the usual
convention), so they show as lower MFU.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 peaks (FLOP/s) of the accelerators the recipe runs on; ``model.peak_tflops`` overrides.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def device_peak_flops(device: torch.device, precision: str | None, override_tflops: float | None = None
                      ) -> float | None:
    """The accelerator's peak FLOP/s for this precision, or None when unknown (then no MFU is logged)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda" or "bf16" not in str(precision or ""):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(non-embedding weight-matrix parameters, the trainable ones): the parameters that multiply."""
    total = trainable = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name or "wte" in name or p.dim() < 2:  # lookups, biases and norms do no matmul
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def model_flops(useful_tokens: int, squared_lengths: int, params: int, trainable: int, layers: int,
                hidden: int) -> float:
    """FLOPs of one training step (forward + backward) over rows whose lengths sum to ``useful_tokens``
    and whose squared lengths sum to ``squared_lengths``."""
    return (4 * params + 2 * trainable) * useful_tokens + 12 * layers * hidden * squared_lengths


def token_counts(feats: dict) -> dict:
    """Useful and computed tokens and the sum of squared row lengths of one model input (padded rows, or
    packed rows carrying their ``lengths``)."""
    lengths = feats["lengths"] if "lengths" in feats else feats["attention_mask"].sum(dim=1)
    return {"useful": int(lengths.sum()), "computed": int(feats["input_ids"].numel()),
            "squared": int((lengths.long() ** 2).sum())}


class StepTimer:
    """``with timer:`` measures one step's wall time after the device has finished its work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self._start
        return False
