"""The offline corpora: the stdlib retrieval corpus and its hard-negative-mined version.

``stdlib_corpus(corpus_dir)`` builds the corpus where the configs say (``paths.data_dir/stdlib``); its
``manifest.json`` stamp (corpus version, Python version, seed) is its spec, checked on every call and rebuilt
under the lock when it differs. ``mined_corpus(...)`` is keyed by the hash of its full spec (the corpus
manifest, the reference model's identity, the length it reads, the mining settings):
``<corpus_dir>_mined-<hash>/``. ``prepare_offline_corpus`` is what the training datamodule is given (by
injection, ``data.prepare``) to obtain its train/val directories.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from reasoning_embed.assets.cache import build_identity, build_once


def stdlib_corpus(corpus_dir: str | Path) -> Path:
    """The stdlib corpus at ``corpus_dir`` (built on first use, one builder at a time)."""
    from filelock import FileLock

    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus

    corpus_dir = Path(corpus_dir)
    corpus_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(corpus_dir) + ".lock"):
        build_stdlib_corpus(corpus_dir)
    return corpus_dir


def corpus_identity(corpus_dir: str | Path) -> str:
    """A hash of a built corpus' manifest (its version, Python version, seed and row counts)."""
    return hashlib.sha256((Path(corpus_dir) / "manifest.json").read_bytes()).hexdigest()[:16]


def mined_corpus(corpus_dir: str | Path, reference: str = "minilm", max_length: int | None = 256,
                 settings=None, progress: bool = True, build_corpus: bool = True) -> Path:
    """The train split of the corpus mined with ``reference`` (val/test copied): ``<corpus_dir>_mined-<hash>``."""
    from reasoning_embed.mining.mine import MineSettings
    from reasoning_embed.mining.offline import OFFLINE_MINING_VERSION, mine_offline_corpus
    from reasoning_embed.models.loading import model_identity, resolve_spec

    corpus_dir = stdlib_corpus(corpus_dir) if build_corpus else Path(corpus_dir)
    settings = settings or MineSettings(mode="replace")
    spec = {"builder": "reasoning_embed.mining.offline", "version": OFFLINE_MINING_VERSION,
            **build_identity(), "corpus": corpus_identity(corpus_dir),
            "reference": model_identity(resolve_spec(reference)), "max_length": max_length,
            "settings": {k: v for k, v in asdict(settings).items() if k != "keep_work_dir"}}
    return build_once(corpus_dir.parent, f"{corpus_dir.name}_mined", spec,
                      lambda staging: mine_offline_corpus(corpus_dir, staging, reference, settings,
                                                          progress=progress, max_length=max_length))


def prepare_offline_corpus(offline_corpus: str | Path, mine_reference: str | None = None,
                           mine_max_length: int | None = 256) -> tuple[str, str]:
    """(train, val) directories of the offline corpus, mined with ``mine_reference`` when given."""
    root = stdlib_corpus(offline_corpus)
    if mine_reference:
        root = mined_corpus(root, reference=mine_reference, max_length=mine_max_length, build_corpus=False)
    return str(root / "train"), str(root / "val")
