"""Bidirectional means bidirectional: checked on behaviour, with padding, for eager and sdpa."""

import pytest
import torch

from reasoning_embed.errors import AttentionCheckError
from reasoning_embed.models.attention import check_attention
from reasoning_embed.models.backbone import load_backbone


def _pos0_changes(model, late_position: int) -> float:
    ids = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    changed = ids.clone()
    changed[0, late_position] += 1
    changed[1, 3] += 1
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=changed, attention_mask=mask).last_hidden_state
    return (a[:, 0] - b[:, 0]).abs().max().item()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bidirectional_later_token_changes_position_zero(micro_backbone, impl):
    model, _, report = load_backbone(str(micro_backbone), "bidirectional", impl)
    assert model.config.is_causal is False
    assert _pos0_changes(model, 5) > 1e-4
    assert report["padding_error"] < 1e-4


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_mode_stays_causal(micro_backbone, impl):
    model, _, report = load_backbone(str(micro_backbone), "causal", impl)
    assert _pos0_changes(model, 5) == 0.0
    assert report["pos0_change"] < 1e-6


def test_padding_does_not_leak_into_real_tokens(micro_backbone):
    model, _, _ = load_backbone(str(micro_backbone), "bidirectional", "sdpa")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).last_hidden_state[1, :2]
        alone = model(input_ids=ids[1:, :2], attention_mask=mask[1:, :2]).last_hidden_state[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "mistral"])
def test_other_decoder_families_become_bidirectional(tmp_path, arch):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen3Config

    cls = {"qwen3": Qwen3Config, "llama": LlamaConfig, "mistral": MistralConfig}[arch]
    config = cls(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    from reasoning_embed.models.tiny import train_bpe_tokenizer  # noqa: F401  (tokenizer not needed here)

    from transformers import AutoConfig, AutoModel

    from reasoning_embed.models.attention import set_attention_mode

    cfg = AutoConfig.from_pretrained(tmp_path)
    set_attention_mode(cfg, "bidirectional")
    model = AutoModel.from_pretrained(tmp_path, config=cfg, attn_implementation="sdpa")
    report = check_attention(model, "bidirectional", vocab_high=128)
    assert report["pos0_change"] > 1e-4
    cfg.is_causal = True
    causal = AutoModel.from_pretrained(tmp_path, config=cfg, attn_implementation="sdpa")
    assert check_attention(causal, "causal", vocab_high=128)["pos0_change"] == 0.0


def test_check_refuses_a_model_that_ignores_the_flag(micro_backbone):
    """A causal model presented as bidirectional (what an old transformers does) is refused, loudly."""
    model, _, _ = load_backbone(str(micro_backbone), "causal", "sdpa")
    with pytest.raises(AttentionCheckError, match=r"transformers \d.*attn_implementation='sdpa'"):
        check_attention(model, "bidirectional")
