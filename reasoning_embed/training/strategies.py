"""Builders between Hydra configs and Lightning strategies (configs hold strings, strategies want classes)."""

from __future__ import annotations

import importlib

# Decoder layer classes FSDP wraps one unit each; unknown names are skipped (older transformers).
DECODER_LAYERS = (
    "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
    "transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer",
    "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "transformers.models.mistral.modeling_mistral.MistralDecoderLayer",
)


def _classes(names):
    out = set()
    for name in names:
        module, _, cls = name.rpartition(".")
        try:
            out.add(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            continue
    return out


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full",
                  activation_checkpointing: bool = True, cpu_offload: bool = False,
                  layer_classes: list[str] | None = None, **kwargs):
    from lightning.pytorch.strategies import FSDPStrategy

    layers = _classes(layer_classes or DECODER_LAYERS)
    return FSDPStrategy(
        sharding_strategy=sharding_strategy,
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        **kwargs,
    )
