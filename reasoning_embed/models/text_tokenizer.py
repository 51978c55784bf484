"""Turning (instruction, text) pairs into model inputs, the same way for training, evaluation and export."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger(__name__)
DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: "
PROMPT_BOUNDARIES = ("prompt_tokens", "offsets")
DEFAULT_PROMPT_BOUNDARY = "prompt_tokens"


class TextTokenizer:
    """Wraps a Hugging Face tokenizer with the recipe's formatting rules.

    Queries are ``query_template.format(instruction=...) + text``; passages are the bare text. No BOS/EOS
    is added unless ``add_special_tokens``. ``prompt_length`` (per row) is where the text's tokens begin,
    by ``prompt_boundary``:

    - ``prompt_tokens``: the token count of the prompt tokenized alone, minus a trailing special token
      (sentence-transformers' rule). A byte-level BPE merges the prompt's trailing space into the text's
      first word (``" Return"``), so that word is excluded from the mean as well.
    - ``offsets``: the first token that ends after the prompt's last character (character offsets of the
      joined text), so a token merged across the boundary counts as text and the first word is kept.

    A row with no text token left (empty text, a one-token text merged into the prompt under
    ``prompt_tokens``, or a query truncated inside its instruction) pools to the zero vector, as in
    sentence-transformers.
    """

    def __init__(self, tokenizer, max_query_length: int = 512, max_passage_length: int = 512,
                 query_template: str = DEFAULT_QUERY_TEMPLATE, add_special_tokens: bool = False,
                 prompt_boundary: str = DEFAULT_PROMPT_BOUNDARY):
        if prompt_boundary not in PROMPT_BOUNDARIES:
            raise ValueError(f"prompt_boundary must be one of {PROMPT_BOUNDARIES}, got {prompt_boundary!r}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with; set tokenizer.pad_token")
        self.hf = tokenizer
        self.max_query_length = max_query_length
        self.max_passage_length = max_passage_length
        self.query_template = query_template
        self.add_special_tokens = add_special_tokens
        self.prompt_boundary = prompt_boundary
        self._prompt_lengths: dict[str, int] = {}

    def prompt(self, instruction: str | None) -> str:
        return self.query_template.format(instruction=instruction) if instruction else ""

    def prompt_length(self, prompt: str) -> int:
        if not prompt:
            return 0
        if prompt not in self._prompt_lengths:
            ids = self.hf(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
            n = len(ids)
            if ids and ids[-1] in set(self.hf.all_special_ids):
                n -= 1
            self._prompt_lengths[prompt] = n
            if n >= self.max_query_length:
                log.warning("the prompt %r alone is %d tokens, max_query_length is %d: every query with this "
                            "instruction is truncated inside it and embeds as the zero vector", prompt, n,
                            self.max_query_length)
        return self._prompt_lengths[prompt]

    def prompt_lengths(self, prompts: Sequence[str], texts: Sequence[str]) -> list[int]:
        """Per row, the number of leading tokens of ``prompt + text`` that are instruction (see the class)."""
        if self.prompt_boundary == "prompt_tokens" or not any(prompts):
            return [self.prompt_length(p) for p in prompts]
        from reasoning_embed.models.st_modules import text_start  # the same code the offsets export ships

        enc = self.hf([p + t for p, t in zip(prompts, texts)], add_special_tokens=self.add_special_tokens,
                      return_offsets_mapping=True)
        return [text_start(offsets, len(p)) if p else 0 for p, offsets in zip(prompts, enc["offset_mapping"])]

    def __call__(self, texts: Sequence[str], prompts: Sequence[str] | str | None = None,
                 max_length: int | None = None) -> dict[str, torch.Tensor]:
        texts = list(texts)
        if prompts is None or isinstance(prompts, str):
            prompts = [prompts or ""] * len(texts)
        enc = self.hf([p + t for p, t in zip(prompts, texts)], padding=True, truncation=True,
                      max_length=max_length or self.max_passage_length,
                      add_special_tokens=self.add_special_tokens, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "prompt_length": torch.tensor(self.prompt_lengths(prompts, texts), dtype=torch.long),
        }

    def queries(self, texts: Sequence[str], instructions: Sequence[str] | str | None) -> dict[str, torch.Tensor]:
        if instructions is None or isinstance(instructions, str):
            instructions = [instructions] * len(texts)
        return self(texts, [self.prompt(i) for i in instructions], self.max_query_length)

    def passages(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self(texts, None, self.max_passage_length)

