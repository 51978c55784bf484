"""Honest throughput: the model-FLOPs formula behind train/mfu against PyTorch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reasoning_embed.training import throughput


@pytest.mark.parametrize("trainable_embeddings_only", [False, True])
def test_model_flops_match_torch_flop_counter(micro_encoder, trainable_embeddings_only):
    """Forward + backward of the backbone on unpadded rows: 4N + 2N_trainable per token plus 12 L d s^2 per
    row of s tokens, as counted by torch.utils.flop_counter (matmuls and attention)."""
    backbone = micro_encoder.backbone
    backbone.set_attn_implementation("eager")  # attention as matmuls the counter sees (it skips CPU sdpa kernels)
    if trainable_embeddings_only:  # frozen body (as with adapters): no weight gradients for N
        for name, p in backbone.named_parameters():
            p.requires_grad_("embed_tokens" in name)
    rows, seq = 4, 24
    ids = torch.randint(10, 1000, (rows, seq))
    with FlopCounterMode(display=False) as counter:
        backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.sum().backward()
    params, trainable = throughput.parameter_counts(backbone)
    expected = throughput.model_flops(rows * seq, rows * seq ** 2, params, trainable,
                                      backbone.config.num_hidden_layers, backbone.config.hidden_size)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)


def test_padding_fraction_counts_attended_tokens_and_packed_rows():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    padded = throughput.token_counts({"input_ids": torch.zeros_like(mask), "attention_mask": mask})
    assert padded == {"useful": 4, "computed": 8, "squared": 9 + 1}
    packed = throughput.token_counts({"input_ids": torch.zeros(1, 4), "lengths": torch.tensor([3, 1])})
    assert packed == {"useful": 4, "computed": 4, "squared": 10}


def test_peak_is_known_only_for_listed_accelerators_in_bf16():
    assert throughput.device_peak_flops(torch.device("cpu"), "32-true") is None
    assert throughput.device_peak_flops(torch.device("cpu"), "bf16-mixed", override_tflops=100) == 100e12
    assert throughput.PEAK_BF16_FLOPS["H100"] == throughput.PEAK_BF16_FLOPS["H200"] == 989e12
