"""A hub backbone missing offline fails fast with a message that says what to do."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from reasoning_embed.errors import BackboneNotAvailableError
from reasoning_embed.models.backbone import resolve_backbone


def test_missing_hub_backbone_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(BackboneNotAvailableError, match=r"hf download Qwen/Qwen2\.5-1\.5B") as err:
        resolve_backbone("Qwen/Qwen2.5-1.5B")
    assert time.perf_counter() - start < 5
    assert "backbone.path" in str(err.value)


def test_missing_local_path_is_named():
    with pytest.raises(BackboneNotAvailableError, match="does not exist"):
        resolve_backbone("/nonexistent/model/dir")


def test_cli_reports_missing_backbone_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reasoning_embed.train", "backbone=qwen_base", "logger=none",
                           "validate_before_training=false", f"paths.outputs_dir={tmp_path}/out",
                           f"paths.data_dir={tmp_path}/data", "data.offline_corpus=null",
                           f"data.train={ROOT}/tests/fixtures/tiny.jsonl"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: backbone 'Qwen/Qwen2.5-1.5B' is not in the local Hugging Face cache" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60
