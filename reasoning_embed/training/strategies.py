"""FSDP for the encoder: FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``.

Why FSDP2 and not Lightning's FSDP1 strategy: FSDP1 wraps the whole LightningModule as its root unit, so the
root's parameters (token embeddings, final norm) are only gathered inside the module's own forward. Every
encoder call outside ``training_step`` (held-out validation, the HRSA callback, export, the end-of-training
evaluation) would see sharded tensors. Here each decoder layer is one ``fully_shard`` unit and the backbone
itself is the root unit, so *any* call of the encoder gathers what it needs through FSDP2's forward hooks.

Two rules make that correct by construction:
- every rank makes the same encoder calls in the same order (validation: every rank embeds the full held-out
  set; the HRSA callback: every rank embeds every probe row when the encoder is sharded);
- work done on rank 0 alone (export, evaluation at the end) uses ``full_encoder``: every rank joins the
  gathering of the full state dict, and rank 0 gets a plain, unsharded copy of the encoder.

Gradient caching works under FSDP2: each chunk's replay is its own forward and backward, and each backward
reduce-scatters into the sharded gradient (FSDP2's gradient accumulation); tested equal to one process.
"""

from __future__ import annotations

import importlib
from datetime import timedelta

import torch

# Decoder layer classes sharded one unit each when a model does not declare ``_no_split_modules``.
DECODER_LAYERS = (
    "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
    "transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer",
    "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "transformers.models.mistral.modeling_mistral.MistralDecoderLayer",
)
STATE_DICT_TYPES = ("full", "sharded")


def _classes(names):
    out = set()
    for name in names:
        module, _, cls = name.rpartition(".")
        try:
            out.add(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            continue
    return out


def decoder_layers(backbone: torch.nn.Module, layer_classes: list[str] | None = None) -> list[torch.nn.Module]:
    """The modules to shard one unit each: the classes transformers itself declares unsplittable
    (``_no_split_modules``), else the known decoder layer classes (or ``layer_classes``)."""
    if layer_classes:
        classes = _classes(layer_classes)
        layers = [m for m in backbone.modules() if isinstance(m, tuple(classes))]
    else:
        names = set()
        for m in backbone.modules():
            names.update(getattr(m, "_no_split_modules", None) or ())
        layers = [m for m in backbone.modules() if type(m).__name__ in names]
        if not layers:
            layers = [m for m in backbone.modules() if isinstance(m, tuple(_classes(DECODER_LAYERS)))]
    if not layers:
        from reasoning_embed.errors import ReasoningEmbedError

        raise ReasoningEmbedError(f"FSDP: no decoder layer found in {type(backbone).__name__}; set "
                                  f"trainer.strategy.layer_classes to the dotted class names of its layers")
    return layers


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_encoder(encoder, mesh=None, reshard_after_forward: bool = True, param_dtype: str | None = None,
                  layer_classes: list[str] | None = None) -> None:
    """``fully_shard`` each decoder layer, then the backbone as the root unit (embeddings, final norm).
    Idempotent: Lightning calls ``configure_model`` once per stage (validate, fit, validate)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(encoder):
        return
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype:  # compute and all-gather in this dtype, reduce gradients in float32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    for layer in decoder_layers(encoder.backbone, layer_classes):
        fully_shard(layer, **kwargs)
    fully_shard(encoder.backbone, **kwargs)


def full_encoder(encoder, rank: int = 0):
    """Collective: every rank must call it. Returns on ``rank`` a plain (unsharded) copy of a sharded encoder
    on the encoder's device, None on the other ranks; an unsharded encoder is returned as it is."""
    if not is_sharded(encoder):
        return encoder
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(encoder.backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != rank:
        return None
    return _plain_copy(encoder, state)


def _plain_copy(encoder, state: dict):
    from transformers import AutoModel

    from reasoning_embed.models.encoder import Encoder

    sharded = encoder.backbone
    config = sharded.config  # a peft model forwards to its base model's config
    with torch.device("meta"):
        twin = AutoModel.from_config(config, attn_implementation=config._attn_implementation)
        if hasattr(sharded, "peft_config"):
            from peft import get_peft_model

            twin = get_peft_model(twin, sharded.peft_config["default"])
    missing, unexpected = twin.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"full_encoder: state dict mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}")
    # buffers are replicated, not sharded (rotary frequencies are not in the state dict): copy each of them,
    # aliases included (a buffer registered under two names is listed once by default)
    for name, _ in list(twin.named_buffers(remove_duplicate=False)):
        owner, _, leaf = name.rpartition(".")
        twin.get_submodule(owner)._buffers[leaf] = sharded.get_buffer(name).detach().cpu().clone()
    left = [n for n, t in [*twin.named_parameters(), *twin.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"full_encoder: no value for {left[:5]}")
    twin = twin.to(encoder.device)
    twin.train(sharded.training)
    return Encoder(twin, encoder.tokenizer, encoder.pooling, encoder.normalize, encoder.attention, name=encoder.name)


def _model_parallel_base():
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy


class FSDP2Strategy(_model_parallel_base()):
    """Lightning's ModelParallelStrategy as pure data parallelism (all ranks in one FSDP group, no tensor
    parallelism); the module's ``configure_model`` calls ``shard_encoder`` with these settings."""

    def __init__(self, reshard_after_forward: bool = True, param_dtype: str | None = None,
                 layer_classes: list[str] | None = None, state_dict_type: str = "full",
                 timeout_minutes: float = 30.0, process_group_backend: str | None = None):
        if state_dict_type not in STATE_DICT_TYPES:
            raise ValueError(f"trainer.strategy.state_dict_type must be one of {STATE_DICT_TYPES}, "
                             f"got {state_dict_type!r}")
        super().__init__(data_parallel_size=1, tensor_parallel_size=1,
                         save_distributed_checkpoint=state_dict_type == "sharded",
                         process_group_backend=process_group_backend, timeout=timedelta(minutes=timeout_minutes))
        self.shard_kwargs = {"reshard_after_forward": reshard_after_forward, "param_dtype": param_dtype,
                             "layer_classes": layer_classes}

    def setup_environment(self) -> None:
        # data parallel over every process (the parent's "auto" would make it tensor parallel)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, encoder) -> None:
        shard_encoder(encoder, self.device_mesh["data_parallel"], **self.shard_kwargs)


def configure_sharding(module) -> None:
    """The LightningModule's ``configure_model``: shard the encoder when the strategy is FSDP2."""
    strategy = getattr(module._trainer, "strategy", None) if module._trainer is not None else None
    if isinstance(strategy, FSDP2Strategy):
        strategy.shard(module.encoder)


def fsdp_strategy(reshard_after_forward: bool = True, param_dtype: str | None = None, state_dict_type: str = "full",
                  layer_classes: list[str] | None = None, **kwargs):
    """Hydra target of ``trainer=fsdp`` / ``trainer=fsdp_cpu``."""
    return FSDP2Strategy(reshard_after_forward=reshard_after_forward, param_dtype=param_dtype,
                         state_dict_type=state_dict_type, layer_classes=layer_classes, **kwargs)


def destroy_process_group_at_exit() -> None:
    """Destroy this process's process group at interpreter exit, whatever its backend.

    Lightning registers this for NCCL only. A gloo rank (CPU runs: ``trainer=fsdp_cpu``, the tests' two-rank
    runs) that exits with its group alive can abort in interpreter finalisation ("terminate called without an
    active exception", SIGABRT; pytorch/pytorch#190489) after its work is done, and the launcher then reports the
    finished run as failed. Destroying a gloo group only joins this process's own worker threads, so a rank that
    finishes first does not wait for rank 0's export and evaluation."""
    import atexit

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.unregister(_destroy_process_group)  # once per process, however many runs it makes
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
