"""Shared set-up for the benchmarks: offline env, a tiny backbone and the stdlib corpus under outputs/bench."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "outputs" / "bench"


def corpus() -> Path:
    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus

    return build_stdlib_corpus(ROOT / "outputs" / "data" / "stdlib")


def tiny_backbone(hidden=128, layers=2, name="tiny") -> Path:
    from reasoning_embed.models.tiny import build_tiny_backbone

    path = BENCH / f"{name}_{hidden}x{layers}"
    if not path.exists():
        build_tiny_backbone(path, corpus(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=4 * hidden)
    return path


def tiny_export(workdir: Path, corpus_dir: Path, max_len: int) -> Path:
    """Build (once) the tiny backbone and its sentence-transformers export; reused across runs and benchmarks."""
    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus
    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.models.export import export_encoder
    from reasoning_embed.models.tiny import build_tiny_backbone

    build_stdlib_corpus(corpus_dir)
    export = workdir / f"tiny_export_L{max_len}"
    if not (export / "modules.json").exists():
        backbone = workdir / "tiny_backbone"
        if not (backbone / "config.json").exists():
            build_tiny_backbone(backbone, corpus_dir, seed=0)
        enc = build_encoder({"path": str(backbone), "name": "tiny"}, max_query_length=max_len,
                            max_passage_length=max_len)
        export_encoder(enc, export)
    return export
