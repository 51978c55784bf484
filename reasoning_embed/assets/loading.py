"""The one loader with the assets layer's builder: what entry points, training, evaluation and HRSA call.

``load_encoder(spec, read)`` is :func:`reasoning_embed.models.loading.load_encoder` with ``build`` set to
:func:`~reasoning_embed.assets.backbones.materialize_backbone`, so tiny backbones are built (and backbone config
names composed) on first use. ``build_encoder`` is the same with the keywords of the ``encoder`` config group.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path


def load_encoder(spec, read: dict | None = None, *, corpus_dir: str | Path | None = None, paths: dict | None = None,
                 **kwargs):
    from reasoning_embed.assets.backbones import materialize_backbone
    from reasoning_embed.models.loading import load_encoder as load

    return load(spec, read, build=partial(materialize_backbone, corpus_dir=corpus_dir, paths=paths), **kwargs)


def build_encoder(backbone, finetune: dict | None = None, corpus_dir: str | Path | None = None,
                  gradient_checkpointing: bool = False, check_attention: bool = True, **read):
    """The training encoder (``conf/encoder/default.yaml``): ``backbone`` read with exactly ``read``."""
    return load_encoder(backbone, read, corpus_dir=corpus_dir, finetune=finetune,
                        gradient_checkpointing=gradient_checkpointing, check_attention=check_attention)
