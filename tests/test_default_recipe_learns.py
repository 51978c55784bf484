"""`make train`'s recipe learns, at its own settings: the real tiny backbone, tokenizer, IDF init, learning rates,
temperature and lengths of ``experiment=offline_default`` on the full stdlib corpus, through the entry point.

The README's headline (untrained 0.429 -> trained 0.493 against BM25's 0.461 after 300 steps on the mined corpus)
is a measured figure; this is the test that fails when the recipe stops learning. It runs the same experiment
with the unmined corpus (``data=offline_random``: mining takes minutes) and fewer steps, and asserts what those
settings reach by a margin (measured in the test's docstring below), not the headline itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, corpus_overrides

STEPS = 150


@pytest.mark.slow
def test_the_default_recipe_learns_past_its_lexical_start_and_reaches_bm25(corpus_dir, tmp_path):
    """Measured on the 2-core machine (seed 42, this command, 90 s): untrained 0.429 -> trained 0.470, BM25 0.461.

    Each floor fails when one part of the recipe goes (same command, one override each): Qwen2's normal token init
    (``backbone.tiny.embedding_init=normal``) 0.255 -> 0.431; Qwen2's RMSNorm eps 1e-6 (the IDF lengths normalised
    away) 0.236 -> 0.372; one learning rate for all (``model.embedding_lr_scale=1``, 100 steps) 0.429 -> 0.433; the
    paper's temperature 0.02 (100 steps) 0.429 -> 0.413."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "reasoning_embed.train", "experiment=offline_default", "data=offline_random",
         f"hydra.run.dir={run_dir}", f"paths.data_dir={corpus_dir.parent}", *corpus_overrides(corpus_dir),
         f"paths.backbones_dir={tmp_path / 'backbones'}", f"trainer.max_steps={STEPS}",
         f"trainer.val_check_interval={STEPS}", f"callbacks.model_checkpoint.every_n_train_steps={STEPS}",
         "callbacks.hrsa=null", "callbacks.progress=null", "logger=none", "baselines=[bm25]", "export=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)  # offline: conftest's environment
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["initial_val"]["val/ndcg@10"], metrics["final_val"]["val/ndcg@10"]
    bm25 = metrics["baselines"]["bm25"]["val/ndcg@10"]
    print(f"untrained {before:.4f} -> trained {after:.4f}, BM25 {bm25:.4f}")
    assert metrics["steps"] == STEPS
    assert before >= 0.35, f"the untrained model lost its lexical start: {before:.4f}"
    assert after >= before + 0.03, f"training did not move held-out retrieval: {before:.4f} -> {after:.4f}"
    assert after >= bm25 - 0.005, f"trained {after:.4f} against BM25 {bm25:.4f}"
