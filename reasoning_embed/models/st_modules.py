"""sentence-transformers modules for exports that stock sentence-transformers would embed differently.

:class:`PipelineTokenizerTransformer`: transformers 5 loads the tokenizer of any qwen2-config model as
``Qwen2Tokenizer`` and rebuilds Qwen's pre-tokeniser; a directory that declares the generic backend
(``TokenizersBackend``, e.g. the tiny backbones' ``bpe_code`` tokenizer, lowercased with whitespace dropped)
gets the pipeline of its ``tokenizer.json`` back, as the framework's loader does
(``reasoning_embed.models.backbone.load_tokenizer``: the same rule).

Exports trained with the ``offsets`` instruction boundary:

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

import json
from pathlib import Path

import torch
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def written_tokenizer(path, loaded):
    """The tokenizer as ``path/tokenizer.json`` writes it when ``loaded`` (AutoTokenizer's) replaced its
    pre-tokeniser and the directory declares the generic backend; else ``loaded``."""
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return loaded
    if json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class") not in GENERIC_TOKENIZER_CLASSES:
        return loaded
    written = json.loads((folder / "tokenizer.json").read_text()).get("pre_tokenizer")
    if json.loads(loaded.backend_tokenizer.to_str()).get("pre_tokenizer") == written:
        return loaded
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok.model_max_length = loaded.model_max_length
    return tok


class PipelineTokenizerTransformer(Transformer):
    def __init__(self, model_name_or_path: str, *args, **kwargs):
        super().__init__(model_name_or_path, *args, **kwargs)
        self.processor = written_tokenizer(kwargs.get("tokenizer_name_or_path") or model_name_or_path, self.processor)


def text_start(offsets, prompt_chars: int) -> int:
    """Index of the first token ending after character ``prompt_chars``; ``len(offsets)`` if none does.
    (The same rule as ``reasoning_embed.models.text_tokenizer.text_start``.)"""
    for i, (_, end) in enumerate(offsets):
        if end > prompt_chars:
            return i
    return len(offsets)


class OffsetBoundaryTransformer(PipelineTokenizerTransformer):
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
