"""A lexical channel through the triple's language-model training: the last ``dims`` dims of the residual stream.

Language-model pre-training erases what a mean pool of a tiny model's last hidden state knows about the text's
words: the blocks write next-token features many times the size of the token embeddings into every
dimension, and the pooled states collapse onto one direction. Measured on `make train`'s IDF-initialised
backbone, 700 pre-training steps took the untrained embedder from 42.9 to 2.8 held-out nDCG@10 x100, and 300
contrastive steps then reached 12.7 (49.3 without pre-training; experiments/tiny_pairs/README.md).

So while the model is a language model (pre-training, RLVR, SFT) the last ``dims`` dimensions are a channel
the blocks read but do not write:

- the blocks' output projections (attention ``o_proj``, MLP ``down_proj``) are held at zero on those rows;
- during pre-training also the token embeddings' rows there stay at their init (``embedding_init: idf``:
  each token a random direction of length ~ its IDF), so the residual stream there is the current token's
  IDF-weighted vector, and the final RMSNorm's gains there stay at 1; the LM head is untied, so it may use
  the channel (the current token) or ignore it. RLVR and SFT train the embeddings and gains too.

After SFT, ``expose`` multiplies the final norm's gains on the channel by ``gain`` and divides the LM head's
columns there by it, for all three models: a reparametrisation that leaves every logit unchanged (tested), so
each is the same language model, and its mean-pooled last hidden state, read as an embedding, is dominated
by the channel, i.e. starts as a random projection of the IDF-weighted bag of the text's tokens (the start
`make train` gets from its init). The contrastive runs then train every weight; nothing is held.
"""

from __future__ import annotations

import torch


def check(hidden_size: int, dims: int, gain: float) -> None:
    """Refuse a channel the build could not make, before any training (``expose`` would fail only at the end)."""
    if dims and not 0 < dims < hidden_size:
        raise ValueError(f"model.lexical_dims must be 0 (no channel) or in (0, hidden_size={hidden_size}), got {dims}")
    if dims and not gain > 0:
        raise ValueError(f"model.lexical_gain must be > 0, got {gain}")


def channel(model, dims: int) -> torch.Tensor:
    """The indices of the channel: the last ``dims`` of the hidden size (checked against it)."""
    hidden = model.config.hidden_size
    if not 0 < dims < hidden:
        raise ValueError(f"model.lexical_dims must be in (0, hidden_size={hidden}), got {dims}")
    if model.config.tie_word_embeddings:
        raise ValueError("a lexical channel needs an untied LM head (tie_word_embeddings=False)")
    return torch.arange(hidden - dims, hidden)


class HeldChannel:
    """Call after every optimizer step: puts the channel's held weights back (the optimizer's decoupled weight
    decay and its steps would move them). Pre-training holds the writers, the embeddings and the norm gains
    (``pretraining=True``); RLVR and SFT hold only the writers, so the blocks never write the channel while the
    model is a language model."""

    def __init__(self, model, dims: int, pretraining: bool = True):
        self.model, self.index, self.pretraining = model, channel(model, dims), pretraining
        self.embedding = model.get_input_embeddings().weight.detach()[:, self.index].clone() if pretraining else None
        self.writers = [p for n, p in model.named_parameters() if n.endswith(("o_proj.weight", "down_proj.weight"))]
        self()

    @torch.no_grad()
    def __call__(self) -> None:
        for p in self.writers:
            p[self.index, :] = 0
        if self.pretraining:
            self.model.get_input_embeddings().weight[:, self.index] = self.embedding
            self.model.model.norm.weight[self.index] = 1.0


@torch.no_grad()
def expose(model, dims: int, gain: float) -> None:
    """Scale the final norm's gains on the channel by ``gain`` and the LM head's columns there by 1 / ``gain``:
    the logits are unchanged, the last hidden state's channel is ``gain`` times larger."""
    check(model.config.hidden_size, dims, gain)
    index = channel(model, dims)
    model.model.norm.weight[index] *= gain
    model.get_output_embeddings().weight[:, index] /= gain
