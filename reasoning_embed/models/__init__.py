"""Decoder LLMs read as (bidirectional) text encoders."""

from reasoning_embed.models.encoder import Encoder, build_encoder
from reasoning_embed.models.text_tokenizer import TextTokenizer

__all__ = ["Encoder", "TextTokenizer", "build_encoder"]
