"""The GPU acceptance script on the CPU (--smoke): the same code paths at tiny shapes, and its exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_failing_check_is_a_fail_row_and_exit_1(monkeypatch, capsys):
    import gpu_acceptance as ga

    def boom(s):
        with ga.check("attention", "deliberately broken"):
            raise AssertionError("position 0 did not change")
        with ga.check("attention", "still runs after a failure") as rec:
            rec.figures = "ok"

    monkeypatch.setattr(ga, "ROWS", [])
    monkeypatch.setattr(ga, "SECTIONS", {"attention": boom})
    assert ga.main(["--smoke", "--only", "attention"]) == 1
    out = capsys.readouterr().out
    assert "| attention | deliberately broken | FAIL | AssertionError: position 0 did not change |" in out
    assert "| attention | still runs after a failure | PASS | ok |" in out


@pytest.mark.slow
def test_smoke_runs_every_section_and_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows_json = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--smoke", "--json",
                           str(rows_json)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(rows_json.read_text())
    sections = {r["section"] for r in rows}
    assert sections == {"attention", "train", "fsdp", "export", "cka", "packed"}
    assert all(r["ok"] is True for r in rows if r["section"] != "packed")
    assert len([r for r in rows if r["section"] == "train"]) == 5  # full FT x 2 batches, LoRA x 2, FSDP2
    assert "| section | check | result | figures | s |" in proc.stdout


BLOCKED_RUN = """
import runpy, sys
from importlib.machinery import PathFinder
_find = PathFinder.find_spec.__func__
def find_spec(cls, name, path=None, target=None):  # as on the GPU machine: these packages are not installed
    if name.split(".")[0] in ("hydra", "omegaconf", "mteb", "wandb", "faiss"):
        return None
    return _find(cls, name, path, target)
PathFinder.find_spec = classmethod(find_spec)
sys.argv = ["gpu_acceptance.py", "--smoke", "--only", "attention", "export", "packed"]
runpy.run_path(%r, run_name="__main__")
"""


@pytest.mark.slow
def test_runs_without_hydra_omegaconf_mteb_wandb_faiss():
    script = BLOCKED_RUN % str(ROOT / "benchmarks" / "gpu_acceptance.py")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| export | export -> sentence-transformers" in proc.stdout
