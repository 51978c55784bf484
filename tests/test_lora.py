"""LoRA: the trainable parameter count is what peft's arithmetic says; merging changes nothing."""

import torch

from conftest import MICRO
from reasoning_embed.models.encoder import build_encoder


def test_lora_trainable_count_and_merge_equivalence(micro_backbone, tmp_path):
    enc = build_encoder({"path": str(micro_backbone)}, finetune={"mode": "lora", "r": 4, "alpha": 8,
                                                                  "dropout": 0.1, "target_modules": "all-linear"})
    h, i, L = MICRO["hidden_size"], MICRO["intermediate_size"], MICRO["num_hidden_layers"]
    kv = MICRO["num_key_value_heads"] * h // MICRO["num_attention_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    expected = L * sum(4 * (a + b) for a, b in shapes)
    trainable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert trainable == expected
    # make the adapters non-trivial, then compare unmerged vs merged export
    with torch.no_grad():
        for name, p in enc.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    texts = ["merge me please", "and me too, a slightly longer text"]
    before = enc.encode(texts, "Instruct")
    from reasoning_embed.models.export import export_encoder

    export_encoder(enc, tmp_path / "model")
    merged = build_encoder({"path": str(tmp_path / "model")})
    after = merged.encode(texts, "Instruct")
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    assert merged.backbone.config.is_causal is False
