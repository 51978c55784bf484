"""The one encode loop: texts are tokenized once, grouped longest first by *token* count, padded per batch.

Every embedding the project computes with its own encoder goes through here: ``Encoder.encode`` (training
validation, the HRSA callback, mining references), the mteb adapter, and HRSA layer-wise extraction (which
uses the pieces: :func:`token_ids`, :func:`fill_empty_rows`, :func:`length_batches`, :func:`pad_rows`).

Grouping by token count (not characters, as sentence-transformers does) keeps a batch to texts of nearly
equal length, so there is little padding even when code and prose of very different token counts mix.
The inputs are the :class:`~reasoning_embed.models.text_tokenizer.TextTokenizer`'s: ``prompt + text``,
truncated to the query or passage limit, special tokens as configured; ``prompt_length`` per row is the
prompt's token count (attended to, excluded from mean pooling).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch


def token_ids(tokenizer, texts: Sequence[str], prompts: Sequence[str] | None = None,
              max_length: int = 512) -> list[list[int]]:
    """Unpadded token ids of ``prompt + text`` per row, truncated to ``max_length`` (``tokenizer`` is a
    TextTokenizer); a row may be empty (an empty document, or whitespace a tokenizer drops)."""
    joined = list(texts) if prompts is None else [p + t for p, t in zip(prompts, texts)]
    if not joined:
        return []
    return tokenizer.hf(joined, padding=False, truncation=True, max_length=int(max_length),
                        add_special_tokens=tokenizer.add_special_tokens)["input_ids"]


def fill_empty_rows(hf, ids: list[list[int]], prompt_lengths: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """A row with no token reads one end-of-text token (a row with no attended token would pool to NaN) kept
    out of the mean (prompt length 1), so it embeds as the zero vector: sentence-transformers embeds an empty
    text so, and so does a query with no text token left after its instruction."""
    filler = hf.eos_token_id if hf.eos_token_id is not None else hf.pad_token_id
    return [row or [filler] for row in ids], [p if row else 1 for row, p in zip(ids, prompt_lengths)]


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of ``batch_size``, longest first (ties keep input order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"
             ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input_ids, attention_mask, offsets): rows padded to the longest on ``side``; ``offsets[r]`` is where
    row r's first token sits."""
    n, width = len(rows), max(len(x) for x in rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    offsets = []
    for r, x in enumerate(rows):
        o = width - len(x) if side == "left" else 0
        input_ids[r, o:o + len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        mask[r, o:o + len(x)] = 1
        offsets.append(o)
    return input_ids, mask, offsets


def model_inputs(encoder, texts: Sequence[str], instructions: Sequence[str | None] | str | None = None,
                 is_query: bool | None = None) -> tuple[list[list[int]], list[int]]:
    """(token ids, prompt lengths) per text, as the encoder reads queries (with their instructions) or
    passages (``is_query`` defaults to ``instructions is not None``)."""
    tok = encoder.tokenizer
    texts = list(texts)
    if is_query is None:
        is_query = instructions is not None
    if not is_query:
        return fill_empty_rows(tok.hf, token_ids(tok, texts, None, tok.max_passage_length), [0] * len(texts))
    if instructions is None or isinstance(instructions, str):
        instructions = [instructions] * len(texts)
    prompts = [tok.prompt(i) for i in instructions]
    return fill_empty_rows(tok.hf, token_ids(tok, texts, prompts, tok.max_query_length),
                           tok.prompt_lengths(prompts, texts))


def run_batches(encoder, ids: list[list[int]], prompt_lengths: Sequence[int], forward: Callable,
                batch_size: int = 64, progress: bool = False, desc: str = "encode") -> dict[str, torch.Tensor]:
    """``forward(input_ids, attention_mask, prompt_length) -> {name: batch x ...}`` over length-grouped
    batches on the encoder's device, in eval mode without gradients; returns each output on CPU (float32)
    in the input order."""
    out: dict[str, torch.Tensor] = {}
    pad_id = encoder.tokenizer.hf.pad_token_id
    side = encoder.tokenizer.hf.padding_side
    batches = length_batches([len(x) for x in ids], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", total=-(-len(ids) // batch_size))
    was_training = encoder.training
    encoder.eval()
    dev = encoder.device
    try:
        with torch.no_grad():
            for idx in batches:
                input_ids, mask, _ = pad_rows([ids[i] for i in idx], pad_id, side)
                plen = torch.tensor([prompt_lengths[i] for i in idx], dtype=torch.long)
                for name, value in forward(input_ids.to(dev), mask.to(dev), plen.to(dev)).items():
                    value = value.float().cpu()
                    if name not in out:
                        out[name] = torch.empty((len(ids), *value.shape[1:]))
                    out[name][idx] = value
    finally:
        encoder.train(was_training)
    return out


def encode(encoder, texts: Sequence[str], instructions: Sequence[str | None] | str | None = None,
           is_query: bool | None = None, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Embeddings (n x dim, float32, CPU, input order) of ``texts`` as queries (with ``instructions``) or
    passages: the encoder's forward, pooling and normalisation."""
    ids, plens = model_inputs(encoder, texts, instructions, is_query)
    if not ids:
        return torch.empty(0, encoder.dim)
    return run_batches(encoder, ids, plens, lambda i, m, p: {"emb": encoder(i, m, p)}, batch_size, progress)["emb"]


def encode_layers(encoder, texts: Sequence[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean-pooled hidden state of every layer (``layer_0`` = embedding output) per text, read as passages."""
    from reasoning_embed.models.pooling import pool

    ids, plens = model_inputs(encoder, texts, None, is_query=False)

    def forward(input_ids, mask, _):
        hs = encoder.hidden_states(input_ids, mask)
        return {f"layer_{i}": pool(h.float(), mask, "mean") for i, h in enumerate(hs)}

    return run_batches(encoder, ids, plens, forward, batch_size) if ids else {}
