"""The paper's recipe at the real architectures (2 layers, real widths, vocabulary and tokenizer, random weights,
512-token inputs) trains 2 steps with gradient caching on a CPU, exports, loads in sentence-transformers with the
framework's embeddings, and evaluates on `local`. Minutes and a few GB of RAM: marked slow."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_real_configs_are_the_published_shapes():
    from reasoning_embed.models.real_arch import real_arch_config

    q2 = real_arch_config("qwen2.5-1.5b", None)
    assert (q2.hidden_size, q2.intermediate_size, q2.num_hidden_layers, q2.num_attention_heads,
            q2.num_key_value_heads, q2.vocab_size, q2.tie_word_embeddings) == (1536, 8960, 28, 12, 2, 151936, True)
    q3 = real_arch_config("qwen3-0.6b")
    assert q3.model_type == "qwen3" and q3.num_hidden_layers == 2 and q3.head_dim == 128
    assert (q3.hidden_size, q3.num_attention_heads, q3.num_key_value_heads, q3.vocab_size) == (1024, 16, 8, 151936)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3-0.6b", "qwen2.5-1.5b"])
def test_real_architecture_dry_run(family, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_real_arch.py"), "--family", family,
                           "--json", str(out), "--work", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["steps"] == 2 and len(r["step_seconds"]) == 2
    assert r["query_tokens"] == 512  # real 512-token inputs
    assert r["export_max_abs_diff"] <= 1e-4  # sentence-transformers embeds as the framework (fp32, 512 tokens)
    assert r["local_failed"] == [] and 0 <= r["local_mean_task"] <= 100
    # the recipe ran unchanged except what a CPU dry run must change
    assert set(r["recipe_differences"]) <= {"trainer.max_steps", "trainer.precision", "global batch"}
