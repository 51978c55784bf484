"""sentence-transformers modules for exports trained with the ``offsets`` instruction boundary.

sentence-transformers measures a prompt by tokenizing it alone and excludes that many tokens, one count for
the whole batch. Under ``prompt_boundary=offsets`` the text starts at the first token that ends after the
prompt's last character (a byte-level BPE merges the prompt's trailing space into the text's first word, and
that token is text), which differs per row. These two modules do the same in sentence-transformers:
:class:`OffsetBoundaryTransformer` gives each row its own ``prompt_length`` and :class:`RowPromptPooling`
excludes each row's own prompt tokens from the mean (a row with no text token left embeds as zero).

Self-contained on purpose (torch and sentence-transformers only): an export ships a copy of this file and
loads it with ``SentenceTransformer(path, trust_remote_code=True)`` where reasoning_embed is not installed.
"""

from __future__ import annotations

import torch
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer


def text_start(offsets, prompt_chars: int) -> int:
    """Index of the first token ending after character ``prompt_chars``; ``len(offsets)`` if none does.
    (The same rule as ``reasoning_embed.models.text_tokenizer.text_start``.)"""
    for i, (_, end) in enumerate(offsets):
        if end > prompt_chars:
            return i
    return len(offsets)


class OffsetBoundaryTransformer(Transformer):
    def preprocess(self, inputs, prompt=None, processing_kwargs=None, **kwargs):
        features = super().preprocess(inputs, prompt=prompt, processing_kwargs=processing_kwargs, **kwargs)
        if prompt and features.get("modality") == "text" and all(isinstance(x, str) for x in inputs):
            special = self.processing_kwargs.get("text", {}).get("add_special_tokens", True)
            enc = self.tokenizer([prompt + x for x in inputs], add_special_tokens=special,
                                 return_offsets_mapping=True)
            features["prompt_length"] = torch.tensor([text_start(o, len(prompt)) for o in enc["offset_mapping"]],
                                                     dtype=torch.long)
        return features


class RowPromptPooling(Pooling):
    def forward(self, features, **kwargs):
        pl = features.get("prompt_length")
        if (self.include_prompt or not isinstance(pl, torch.Tensor) or pl.numel() <= 1 or self.pooling_mode != "mean"
                or "cu_seq_lens_q" in features or "attention_mask" not in features):
            return super().forward(features, **kwargs)
        tokens, mask = features["token_embeddings"], features["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        start = mask.long().argmax(dim=1, keepdim=True)
        keep = (mask.bool() & (positions >= start + pl.to(mask.device).view(-1, 1))).unsqueeze(-1)
        keep = keep.to(torch.float32)
        summed = (tokens.float() * keep).sum(dim=1)
        features["sentence_embedding"] = (summed / keep.sum(dim=1).clamp(min=1)).to(tokens.dtype)
        return features
