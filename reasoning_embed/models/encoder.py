"""The embedding model: a decoder backbone, its tokenizer rules, pooling and L2 normalisation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from reasoning_embed.models.pooling import pool
from reasoning_embed.models.text_tokenizer import DEFAULT_QUERY_TEMPLATE, TextTokenizer


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

    @torch.no_grad()
    def encode(self, texts: Sequence[str], instructions: Sequence[str] | str | None = None,
               batch_size: int = 64, is_query: bool | None = None, progress: bool = False) -> torch.Tensor:
        """Embed texts (queries when ``instructions`` is given or ``is_query``), longest first, on CPU out."""
        texts = list(texts)
        if is_query is None:
            is_query = instructions is not None
        if instructions is None or isinstance(instructions, str):
            instructions = [instructions] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        was_training = self.training
        self.eval()
        batches = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode", unit="batch")
        for start in batches:
            idx = order[start:start + batch_size]
            chunk = [texts[i] for i in idx]
            if is_query:
                feats = self.tokenizer.queries(chunk, [instructions[i] for i in idx])
            else:
                feats = self.tokenizer.passages(chunk)
            feats = {k: v.to(self.device) for k, v in feats.items()}
            out[idx] = self(**feats).float().cpu()
        self.train(was_training)
        return out


def build_encoder(backbone: dict, attention: str = "bidirectional", pooling: str = "mean", normalize: bool = True,
                  attn_implementation: str = "sdpa", dtype: str = "float32", max_query_length: int = 512,
                  max_passage_length: int = 512, query_template: str = DEFAULT_QUERY_TEMPLATE,
                  add_special_tokens: bool = False, gradient_checkpointing: bool = False,
                  finetune: dict | None = None, corpus_dir: str | None = None, check_attention: bool = True) -> Encoder:
    """Build the encoder from config dicts (``backbone`` and ``finetune`` groups)."""
    from reasoning_embed.models.backbone import load_backbone, resolve_backbone

    backbone = dict(backbone)
    path = resolve_backbone(backbone["path"], backbone.get("tiny"), corpus_dir, backbone.get("revision"))
    model, hf_tok, _ = load_backbone(path, attention, attn_implementation, dtype, backbone.get("revision"),
                                     check=check_attention)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    finetune = dict(finetune or {"mode": "full"})
    if finetune.get("mode") == "lora":
        from reasoning_embed.models.lora import apply_lora

        model = apply_lora(model, **{k: v for k, v in finetune.items() if k != "mode"})
    elif finetune.get("mode") not in ("full", None):
        raise ValueError(f"finetune.mode must be 'full' or 'lora', got {finetune.get('mode')!r}")
    tok = TextTokenizer(hf_tok, max_query_length, max_passage_length, query_template, add_special_tokens)
    return Encoder(model, tok, pooling, normalize, attention, name=backbone.get("name", path))
