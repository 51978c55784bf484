"""The backbone foundry: a tiny base / RLVR / SFT triple built offline (``python -m reasoning_embed.foundry``)."""

from reasoning_embed.foundry.build import DEFAULTS, VARIANTS, build_triple, triple_complete

__all__ = ["DEFAULTS", "VARIANTS", "build_triple", "triple_complete"]
