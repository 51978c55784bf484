"""Export an encoder as a Hugging Face directory that sentence-transformers loads as-is.

``model/config.json`` carries ``"is_causal": false``; ``modules.json`` chains Transformer -> Pooling
(``include_prompt: false`` so instruction tokens are excluded as in training) -> Normalize.
sentence-transformers has a single ``max_seq_length``: the export takes the larger of the encoder's query
and passage limits (the recipe uses 512 for both, so embeddings match exactly).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_ST_POOLING = {"mean": "mean", "last_token": "lasttoken", "first": "cls"}


def export_encoder(encoder, out_dir: str | Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from reasoning_embed.models.lora import merged_backbone

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        hf_dir = tmp / "hf"
        backbone = merged_backbone(encoder.backbone)
        backbone.config.is_causal = encoder.attention == "causal"
        backbone.save_pretrained(hf_dir)
        encoder.tokenizer.hf.save_pretrained(hf_dir)
        max_len = max(encoder.tokenizer.max_query_length, encoder.tokenizer.max_passage_length)
        transformer = Transformer(str(hf_dir), max_seq_length=max_len,
                                  model_kwargs={"dtype": backbone.dtype})
        modules = [transformer, Pooling(encoder.dim, _ST_POOLING[encoder.pooling], include_prompt=False)]
        if encoder.normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        st.save(str(tmp / "st"))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (tmp / "st").rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
