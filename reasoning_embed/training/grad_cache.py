"""GradCache: contrastive training on a large batch in bounded memory (Gao et al., 2021).

1. Embed the batch chunk by chunk without a graph, saving each chunk's random state.
2. Compute the loss over the whole (globally gathered) batch and its gradient w.r.t. the embeddings.
3. Embed each chunk again, with graph, under its saved random state (the same dropout masks), and
   back-propagate its slice of that gradient. Under DDP only the last chunk synchronises gradients.

The loss sees the whole batch's embeddings, so *which rows share a chunk does not change the gradient*.
Rows are therefore sorted by token count and cut by a token budget (``chunk_tokens``: rows x longest row
<= budget, a row longer than the budget alone), each chunk padded only to its own longest row, and the
embeddings put back in batch order. Activation memory per chunk is bounded by the budget, and almost
no compute goes to padding. With flash-attention 2, a chunk's rows are packed into one row with no padding
at all (position ids restart at every row, cumulative lengths tell the kernel where rows end, attention
stays bidirectional), as transformers' ``DataCollatorWithFlattening`` does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from reasoning_embed.models.pooling import pool
from reasoning_embed.training.losses import info_nce_with_grad

SIDES = ("query", "passages")
PACKING_ATTENTION = ("flash_attention_2",)  # kernels that take packed rows with cumulative lengths
MAX_CHUNK_PADDING = 0.1  # token-budget chunks of padded rows: at most this fraction padding each


class RandomState:
    """Captures CPU and CUDA RNG states at construction; ``with state:`` restores them for its block."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=list(range(len(self.cuda))) if self.cuda else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def split_features(feats: dict, size: int) -> list[dict]:
    """Consecutive slices of ``size`` rows, each keeping the whole batch's padding (the old chunking)."""
    n = feats["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in feats.items()} for i in range(0, n, size)]


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class Chunk:
    """Rows of one side of the batch that are embedded together."""

    side: str               # "query" or "passages"
    rows: torch.Tensor      # the rows' positions in the side's batch
    feats: dict             # their model inputs: padded to the chunk's own longest row, or packed


def row_lengths(feats: dict) -> list[int]:
    return feats["attention_mask"].sum(dim=1).tolist()


def fixed_rows(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def sorted_rows(lengths: list[int], size: int) -> list[list[int]]:
    """``size`` rows per chunk, longest rows first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + size] for i in range(0, len(order), size)]


def budget_rows(lengths: list[int], budget: int, max_padding: float | None = MAX_CHUNK_PADDING) -> list[list[int]]:
    """Rows sorted longest first, cut so that rows x longest row <= ``budget`` tokens per chunk and, with
    ``max_padding``, no chunk is more than that fraction padding (short rows span a wide relative range).

    The padded cost of a chunk bounds its activation memory (and the packed cost, which is at most the
    padded one). A row longer than the budget forms a chunk of its own.
    """
    if budget < 1:
        raise ValueError(f"model.chunk_tokens must be a positive token count, got {budget}")
    chunks: list[list[int]] = []
    useful = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if chunks:
            cost = (len(chunks[-1]) + 1) * max(1, lengths[chunks[-1][0]])
            if cost <= budget and (max_padding is None or 1 - (useful + lengths[i]) / cost <= max_padding):
                chunks[-1].append(i)
                useful += lengths[i]
                continue
        chunks.append([i])
        useful = lengths[i]
    return chunks


def split_to_count(chunks: list[list[int]], count: int) -> list[list[int]]:
    """Halve the largest chunks until there are ``count`` of them (ranks must run equally many forwards)."""
    chunks = [list(c) for c in chunks]
    while len(chunks) < count:
        i = max(range(len(chunks)), key=lambda j: len(chunks[j]))
        if len(chunks[i]) < 2:
            raise ValueError(f"cannot split {sum(map(len, chunks))} rows into {count} chunks")
        c = chunks.pop(i)
        chunks[i:i] = [c[:len(c) // 2], c[len(c) // 2:]]
    return chunks


def take_rows(feats: dict, rows: list[int], trim: bool = True) -> dict:
    """The given rows' inputs; with ``trim``, only the columns any of them attends to (padding on either side)."""
    idx = torch.as_tensor(rows, dtype=torch.long, device=feats["input_ids"].device)
    out = {k: v.index_select(0, idx) for k, v in feats.items()}
    if trim:
        attended = out["attention_mask"].bool().any(dim=0).nonzero().flatten()
        lo, hi = (int(attended[0]), int(attended[-1]) + 1) if len(attended) else (0, 1)
        width = feats["input_ids"].shape[1]
        out = {k: v[:, lo:hi] if v.dim() == 2 and v.shape[1] == width else v for k, v in out.items()}
    return out


def pack_rows(feats: dict) -> dict:
    """Padded rows -> one packed row: the attended tokens of every row, in order, no padding.

    ``position_ids`` restart at 0 for each row (as a right-padded row sees them); ``cu_seq_lens_*`` and
    ``max_length_*`` are flash-attention's variable-length arguments (what transformers'
    ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` produces). ``lengths`` and
    ``prompt_length`` are kept for pooling.
    """
    mask = feats["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = lengths.cumsum(0)
    positions = torch.cat([torch.arange(int(n), device=mask.device) for n in lengths])
    longest = int(lengths.max()) if len(lengths) else 0
    return {"input_ids": feats["input_ids"][mask].unsqueeze(0), "position_ids": positions.unsqueeze(0),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
            "lengths": lengths, "prompt_length": feats.get("prompt_length")}


def plan_chunks(batch: dict, chunk_size: int | None = None, chunk_tokens: int | None = None, sort: bool = True,
                pack: bool = False, agree_counts: Callable[[list[int]], list[int]] | None = None) -> list[Chunk]:
    """The chunks of a batch: ``chunk_tokens`` (token budget) when set, else ``chunk_size`` queries per chunk
    (``chunk_size x group`` passages). ``sort=False`` is the old plan: batch order, batch-wide padding.
    ``agree_counts`` maps this rank's chunk counts per side to the counts every rank uses (the maximum)."""
    if not chunk_size and not chunk_tokens:
        raise ValueError("gradient caching needs model.chunk_size or model.chunk_tokens")
    group = batch["group_size"]
    plans = []
    for side, size in zip(SIDES, (chunk_size, (chunk_size or 0) * group)):
        lengths = row_lengths(batch[side])
        if chunk_tokens:
            plans.append(budget_rows(lengths, chunk_tokens, None if pack else MAX_CHUNK_PADDING))
        else:
            plans.append(sorted_rows(lengths, size) if sort else fixed_rows(len(lengths), size))
    if agree_counts is not None:
        plans = [split_to_count(p, n) for p, n in zip(plans, agree_counts([len(p) for p in plans]))]
    chunks = []
    for side, plan in zip(SIDES, plans):
        for rows in plan:
            feats = take_rows(batch[side], rows, trim=sort)
            chunks.append(Chunk(side, torch.as_tensor(rows, dtype=torch.long), pack_rows(feats) if pack else feats))
    return chunks


# ---------------------------------------------------------------------------------------------- embedding
def packing_supported(encoder) -> bool:
    """Packed chunks need a kernel that reads cumulative lengths (flash-attention 2, on a GPU) and
    right-aligned positions (a tokenizer padding on the right, so a padded row also starts at position 0)."""
    config = encoder.backbone.config
    side = getattr(getattr(encoder.tokenizer, "hf", None), "padding_side", "right")
    return (getattr(config, "_attn_implementation", None) in PACKING_ATTENTION and encoder.device.type == "cuda"
            and side == "right")


def _block_diagonal_mask(lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask letting each packed row attend to itself only (for kernels without cumulative lengths)."""
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    allowed = seq[:, None] == seq[None, :]
    zero = torch.zeros((), dtype=dtype, device=lengths.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


def _packed_inputs(encoder, packed: dict, input_ids: torch.Tensor | None = None) -> dict:
    kwargs = {"input_ids": packed["input_ids"] if input_ids is None else input_ids,
              "position_ids": packed["position_ids"]}
    if getattr(encoder.backbone.config, "_attn_implementation", None) in PACKING_ATTENTION:
        kwargs.update({k: packed[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
    else:
        dtype = next(encoder.backbone.parameters()).dtype
        kwargs["attention_mask"] = _block_diagonal_mask(packed["lengths"], dtype)
    return kwargs


def embed_packed(encoder, packed: dict) -> torch.Tensor:
    """Embeddings of a packed chunk, pooled exactly as ``Encoder.forward`` pools the padded rows.

    With flash-attention 2 the kernel separates the rows by ``cu_seq_lens``; any other attention gets an
    explicit block-diagonal mask (quadratic in the packed length: for checking the packing, not for speed).
    """
    lengths = packed["lengths"]
    hidden = encoder.backbone(**_packed_inputs(encoder, packed)).last_hidden_state[0]  # (total tokens, d)
    n, longest = len(lengths), int(lengths.max())
    mask = torch.arange(longest, device=hidden.device)[None, :] < lengths[:, None]
    padded = hidden.new_zeros(n, longest, hidden.shape[-1])
    padded[mask] = hidden  # right-aligned rows, as pooling reads them
    emb = pool(padded, mask.long(), encoder.pooling, packed.get("prompt_length")).float()
    return torch.nn.functional.normalize(emb, dim=-1) if encoder.normalize else emb


def embed_chunk(encoder, chunk: Chunk) -> torch.Tensor:
    if "cu_seq_lens_q" in chunk.feats:
        return embed_packed(encoder, chunk.feats)
    return encoder(**chunk.feats)


def _in_batch_order(chunks: list[Chunk], embs: list[torch.Tensor], side: str, n: int) -> torch.Tensor:
    pairs = [(c, e) for c, e in zip(chunks, embs) if c.side == side]
    out = pairs[0][1].new_empty(n, pairs[0][1].shape[-1])
    for chunk, emb in pairs:
        out[chunk.rows.to(out.device)] = emb
    return out


# ---------------------------------------------------------------------------------------------- the step
def embedding_gradients(q: torch.Tensor, p: torch.Tensor, gather: Callable, group_size: int, temperature: float,
                        loss_chunk: int = 32) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """The loss over the gathered batch and d loss / d (this rank's) query and passage embeddings.

    ``gather(p) -> (p_all, offset)`` is a differentiable all-gather (identity on one process); its
    backward sums each rank's share of the passage gradient. The loss gradient is computed ``loss_chunk``
    queries at a time, so the queries x passages score matrix never exists in full.
    """
    p = p.detach().requires_grad_()
    p_all, offset = gather(p)
    loss, stats, q_grad, p_all_grad = info_nce_with_grad(q.detach(), p_all.detach(), group_size, temperature,
                                                         offset, chunk_size=loss_chunk)
    p_grad = p_all_grad if p_all is p else torch.autograd.grad(p_all, p, p_all_grad)[0]
    return loss, stats, q_grad, p_grad


def cached_step(encoder, batch: dict, chunks: list[Chunk], loss_gradients: Callable, backward: Callable,
                no_sync: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, dict]:
    """One GradCache step over planned ``chunks``; gradients accumulate in the encoder's parameters.

    ``loss_gradients(q, p) -> (loss, stats, q_grad, p_grad)`` (see :func:`embedding_gradients`);
    ``backward(tensor)`` back-propagates (Lightning's ``manual_backward``); ``no_sync()`` blocks the
    gradient synchronisation of every chunk but the last.
    """
    states, embs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState())
            embs.append(embed_chunk(encoder, chunk))
    sizes = {side: batch[side]["input_ids"].shape[0] for side in SIDES}
    q, p = (_in_batch_order(chunks, embs, side, sizes[side]) for side in SIDES)
    loss, stats, q_grad, p_grad = loss_gradients(q, p)
    grads = {"query": q_grad, "passages": p_grad}
    for i, (chunk, state) in enumerate(zip(chunks, states)):
        last = i == len(chunks) - 1
        with (contextlib.nullcontext() if last else no_sync()), state:
            emb = embed_chunk(encoder, chunk)
            backward((emb * grads[chunk.side][chunk.rows.to(emb.device)]).sum())
    return loss.detach(), stats


# ---------------------------------------------------------------------------------------------- checks
@torch.no_grad()
def check_packed_equals_padded(encoder, feats: dict, atol: float | None = None) -> dict:
    """Embeddings of ``feats`` (padded rows) through the packed path vs ``Encoder.forward``, in eval mode.

    For the GPU acceptance script: with flash-attention 2 this exercises the variable-length kernel; on
    any other attention it checks the packing itself (block-diagonal mask). Also checks that the packed
    path is bidirectional: changing a row's last token changes that row's first-token state (and no other
    row's embedding). Raises AssertionError with the figures; returns them.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        half = next(encoder.backbone.parameters()).dtype in (torch.bfloat16, torch.float16)
        atol = atol if atol is not None else (2e-2 if half else 1e-5)
        padded = encoder(**feats)
        packed = pack_rows(feats)
        max_diff = (embed_packed(encoder, packed) - padded).abs().max().item()
        ids = packed["input_ids"].clone()
        ends = packed["cu_seq_lens_q"][1:].long() - 1
        ids[0, ends[0]] = (ids[0, ends[0]] + 1) % encoder.backbone.config.vocab_size
        base = encoder.backbone(**_packed_inputs(encoder, packed)).last_hidden_state[0].float()
        moved = encoder.backbone(**_packed_inputs(encoder, packed, ids)).last_hidden_state[0].float()
        first_row_change = ((moved[0] - base[0]).norm() / base[0].norm().clamp(min=1e-6)).item()
        other_rows_change = (moved[int(ends[0]) + 1:] - base[int(ends[0]) + 1:]).abs().max().item() if len(ends) > 1 else 0.0
    finally:
        encoder.train(was_training)
    figures = {"attn_implementation": getattr(encoder.backbone.config, "_attn_implementation", None),
               "max_abs_diff": max_diff, "first_token_change": first_row_change,
               "other_rows_change": other_rows_change, "atol": atol}
    assert max_diff <= atol, f"packed embeddings differ from padded ones: {figures}"
    assert first_row_change > (5e-2 if half else 1e-4), f"packed attention is not bidirectional: {figures}"
    assert other_rows_change <= (atol if not half else 5e-2), f"packed rows attend to each other: {figures}"
    return figures
