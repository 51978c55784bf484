"""Attention mode of a decoder LLM: ``causal`` (as pre-trained) or ``bidirectional`` (as an encoder).

transformers >= 5.2 reads ``config.is_causal``; this module sets it and then *checks behaviour*, because a
flag is not proof: changing a late token must change position 0's state when bidirectional (and must not
when causal), and a padded row must give the same states as the row alone (the padding mask is kept).
"""

from __future__ import annotations

import torch

from reasoning_embed.errors import AttentionCheckError

ATTENTION_MODES = ("bidirectional", "causal")


def set_attention_mode(config, attention: str) -> None:
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    config.is_causal = attention == "causal"
    for sub in ("text_config", "decoder"):  # composite configs keep the LM config inside
        if hasattr(config, sub) and getattr(config, sub) is not None:
            getattr(config, sub).is_causal = config.is_causal


def _states(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).last_hidden_state.float()


@torch.no_grad()
def check_attention(model, attention: str, vocab_low: int = 10, vocab_high: int = 1000) -> dict:
    """Verify ``attention`` behaviourally on a padded two-row batch; raise AttentionCheckError if wrong."""
    import transformers

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    half = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    tol = 5e-2 if half else 1e-4
    g = torch.Generator().manual_seed(0)
    high = min(vocab_high, model.config.vocab_size)
    ids = torch.randint(vocab_low, high, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # row 1 is right-padded: 5 real tokens
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1 - vocab_low) % (high - vocab_low) + vocab_low
    changed[1, 4] = (ids[1, 4] + 1 - vocab_low) % (high - vocab_low) + vocab_low
    ids, mask, changed = ids.to(device), mask.to(device), changed.to(device)

    base = _states(model, ids, mask)
    moved = _states(model, changed, mask)
    alone = _states(model, ids[1:, :5], mask[1:, :5])
    scale = base[:, 0].norm(dim=-1).clamp(min=1e-6)
    pos0_change = ((moved[:, 0] - base[:, 0]).norm(dim=-1) / scale).min().item()
    pos0_change_max = ((moved[:, 0] - base[:, 0]).norm(dim=-1) / scale).max().item()
    pad_error = ((base[1, :5] - alone[0]).norm(dim=-1) / alone[0].norm(dim=-1).clamp(min=1e-6)).max().item()
    model.train(was_training)

    impl = getattr(model.config, "_attn_implementation", "unknown")
    where = (f"transformers {transformers.__version__}, attn_implementation={impl!r}, "
             f"model_type={model.config.model_type!r}")
    if attention == "bidirectional" and pos0_change <= tol:
        raise AttentionCheckError(
            f"attention='bidirectional' requested but a later token does not change position 0 "
            f"(relative change {pos0_change:.2e}) with {where}. This transformers version or attention "
            f"implementation ignores config.is_causal=False; use transformers>=5.2 with 'sdpa' or 'eager'.")
    if attention == "causal" and pos0_change_max > tol:
        raise AttentionCheckError(
            f"attention='causal' requested but a later token changes position 0 (relative change "
            f"{pos0_change_max:.2e}) with {where}.")
    if pad_error > 10 * tol:
        raise AttentionCheckError(
            f"padding changes the states of a padded row (relative error {pad_error:.2e}) with {where}: "
            f"the attention mask is being dropped.")
    return {"attention": attention, "attn_implementation": impl, "pos0_change": pos0_change,
            "padding_error": pad_error}
