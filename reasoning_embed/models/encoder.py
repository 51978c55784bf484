"""The embedding model: a decoder backbone, its tokenizer rules, pooling and L2 normalisation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from reasoning_embed.models.encode import encode
from reasoning_embed.models.pooling import pool
from reasoning_embed.models.defaults import ENCODER_KEYS, encoder_defaults
from reasoning_embed.models.text_tokenizer import TextTokenizer


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer: TextTokenizer, pooling: str = "mean",
                 normalize: bool = True, attention: str = "bidirectional", name: str = "backbone"):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.attention = attention
        self.name = name

    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, input_ids, attention_mask, prompt_length=None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling, prompt_length).float()
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def hidden_states(self, input_ids, attention_mask) -> tuple[torch.Tensor, ...]:
        """Embedding output + every layer's output (L + 1 tensors of batch x seq x d)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states

    def encode(self, texts: Sequence[str], instructions: Sequence[str] | str | None = None,
               batch_size: int = 64, is_query: bool | None = None, progress: bool = False) -> torch.Tensor:
        """Embed texts (queries when ``instructions`` is given or ``is_query``) on CPU out, in input order;
        the one encode loop (:func:`reasoning_embed.models.encode.encode`)."""
        return encode(self, texts, instructions, is_query, batch_size, progress)


def build_encoder(backbone: dict, finetune: dict | None = None, gradient_checkpointing: bool = False,
                  check_attention: bool = True, **settings) -> Encoder:
    """The encoder of a loadable backbone (a model directory or a cached hub id), with exactly these
    ``settings`` (``ENCODER_KEYS``; one not given takes its default from ``conf/encoder/default.yaml``,
    :mod:`reasoning_embed.models.defaults`). Specs of every other kind (a run, an export's own settings, a
    tiny backbone to build, a config name) go through the one loader, :func:`reasoning_embed.models.loading.load_encoder`."""
    from reasoning_embed.models.backbone import load_backbone, resolve_backbone

    unknown = sorted(set(settings) - set(ENCODER_KEYS))
    if unknown:
        raise TypeError(f"build_encoder got unknown settings {unknown}; the settings are {ENCODER_KEYS}")
    s = {**encoder_defaults(), **settings}  # the defaults of conf/encoder/default.yaml
    backbone = dict(backbone)
    if backbone.get("tiny"):
        from reasoning_embed.errors import ReasoningEmbedError

        raise ReasoningEmbedError(f"backbone {backbone.get('name')!r} is a tiny backbone built on first use: "
                                  f"load it with reasoning_embed.assets.load_encoder / assets.build_encoder")
    path = resolve_backbone(backbone["path"], backbone.get("revision"))
    model, hf_tok, _ = load_backbone(path, s["attention"], s["attn_implementation"], s["dtype"],
                                     backbone.get("revision"), check=check_attention)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    finetune = dict(finetune or {"mode": "full"})
    if finetune.get("mode") == "lora":
        from reasoning_embed.models.lora import apply_lora

        model = apply_lora(model, **{k: v for k, v in finetune.items() if k != "mode"})
    elif finetune.get("mode") not in ("full", None):
        raise ValueError(f"finetune.mode must be 'full' or 'lora', got {finetune.get('mode')!r}")
    tok = TextTokenizer(hf_tok, s["max_query_length"], s["max_passage_length"], s["query_template"],
                        s["add_special_tokens"], s["prompt_boundary"])
    return Encoder(model, tok, s["pooling"], s["normalize"], s["attention"], name=backbone.get("name", path))
