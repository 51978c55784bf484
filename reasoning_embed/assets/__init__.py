"""The assets layer: what is built on first use and cached — the tiny backbones (random init, or the foundry's
trained triple), the stdlib corpus and its mined version — and the one model loader bound to these builders.

It sits above ``models``, ``data``, ``mining`` and ``foundry`` and below the entry points, training, evaluation
and HRSA: the lower layers load and build nothing on their own. Every cached asset is keyed by the hash of its
full spec (``assets.cache``); see ``docs/architecture.md``.
"""

from reasoning_embed.assets.backbones import backbone_config, default_paths, materialize_backbone, tiny_backbone
from reasoning_embed.assets.cache import build_once, spec_hash
from reasoning_embed.assets.corpus import mined_corpus, prepare_offline_corpus, stdlib_corpus
from reasoning_embed.assets.loading import build_encoder, load_encoder

__all__ = ["backbone_config", "build_encoder", "build_once", "default_paths", "load_encoder", "materialize_backbone",
           "mined_corpus", "prepare_offline_corpus", "spec_hash", "stdlib_corpus", "tiny_backbone"]
