"""Runs that survive interruption, concurrency and bad input, with logs a person can read.

One test (or more) per fault: two real processes into one run directory, signals sent to a real training
subprocess, a truncated checkpoint, each kind of bad file, resume, logs, collapse, README commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import ROOT, corpus_overrides, run_short_training, synthetic_rows, write_jsonl

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "PYTHONUNBUFFERED": "1"}
HOLD = ("import sys, time; from reasoning_embed.utils.run_lock import hold_run_dir; hold_run_dir(sys.argv[1]); "
        "print('held', flush=True); time.sleep(600)")


def _cli_args(micro_backbone, corpus_dir, run_dir, *extra):
    return [sys.executable, "-m", "reasoning_embed.train", "debug=fast", "logger=none", f"hydra.run.dir={run_dir}",
            f"backbone.path={micro_backbone}", "backbone.tiny=null", f"paths.data_dir={corpus_dir.parent}",
            *corpus_overrides(corpus_dir), "data.mine_reference=null", "callbacks.progress=null", *extra]


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------------------------------------- one run per dir
def test_second_run_into_a_live_run_dir_stops_at_once_naming_the_other(micro_backbone, corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        proc = subprocess.run(_cli_args(micro_backbone, corpus_dir, run_dir), capture_output=True, text=True,
                              cwd=ROOT, env=ENV, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"pid {holder.pid}" in proc.stderr and "in use" in proc.stderr
    assert not (run_dir / ".hydra").exists() and not (run_dir / "train.log").exists()  # nothing touched


def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path):
    from reasoning_embed.utils.run_lock import hold_run_dir, release_run_dir

    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    holder.send_signal(signal.SIGKILL)  # dies without releasing: the file still names it
    holder.wait()
    notices = []
    hold_run_dir(run_dir, notice=notices.append)
    release_run_dir(run_dir)
    assert len(notices) == 1 and f"pid {holder.pid}" in notices[0] and "stale" in notices[0]
    hold_run_dir(run_dir, notice=notices.append)  # released cleanly: no notice the second time
    release_run_dir(run_dir)
    assert len(notices) == 1


# ---------------------------------------------------------------------------------------------- results first
def test_missing_benchmark_data_fails_before_training(train_cfg, tmp_path, monkeypatch):
    from reasoning_embed.evaluation.errors import BenchmarkDataMissingError
    from reasoning_embed.train import train

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    cfg = train_cfg("eval.benchmark=bright")
    with pytest.raises(BenchmarkDataMissingError):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # not one training step ran


def test_metrics_are_written_before_evaluation_and_export(train_cfg, monkeypatch):
    import reasoning_embed.train as train_mod

    def broken(*a, **k):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(train_mod, "_evaluate_at_end", broken)
    cfg = train_cfg("trainer.max_steps=2")
    with open_dict(cfg):
        cfg.export = False
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train_mod.train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["status"] == "trained" and metrics["steps"] == 2 and "val/ndcg@10" in metrics["final_val"]


# ---------------------------------------------------------------------------------------------- interruption
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_resumable_checkpoint_and_records_an_interruption(micro_backbone, corpus_dir, tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_cli_args(micro_backbone, corpus_dir, run_dir, "trainer.max_steps=100000",
                                      "trainer.val_check_interval=100000", "callbacks.hrsa.enabled=false",
                                      '+extra_note="a, b"'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    out = []
    for line in proc.stdout:  # wait until training runs
        out.append(line)
        if "effective recipe" in line:
            break
    time.sleep(2)
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    text = "".join(out) + rest
    assert proc.returncode == 128 + sig, text[-3000:]
    assert "Traceback" not in text
    assert not (run_dir / "failed.json").exists()
    info = json.loads((run_dir / "interrupted.json").read_text())
    assert info["signal"] == signal.Signals(sig).name and info["step"] >= 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    cmd = shlex.split(info["resume"])
    assert cmd[1:3] == ["-m", "reasoning_embed.train"] and "ckpt_path=last" in cmd
    assert f"hydra.run.dir={run_dir.resolve()}" in cmd and '+extra_note="a, b"' in cmd  # verbatim overrides
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == info["step"]


# ---------------------------------------------------------------------------------------------- resume
def _run(train_cfg, out, *extra, **kw):
    return run_short_training(train_cfg, out, "callbacks.hrsa.every_n_steps=1", *extra, **kw)


def _realignment(run_dir: Path) -> dict:
    return {r["step"]: r for r in map(json.loads, (run_dir / "hrsa" / "realignment.jsonl").read_text().splitlines())}


def test_resume_keeps_initial_val_hrsa_baseline_sampler_position(train_cfg, tmp_path):
    straight, _ = _run(train_cfg, tmp_path / "straight", "callbacks.hrsa.save_features=false", validate=True)
    stopped, _ = _run(train_cfg, tmp_path / "resumed", "callbacks.hrsa.save_features=false", stop_at=3, validate=True)
    assert stopped["steps"] == 3
    resumed, caught = _run(train_cfg, tmp_path / "resumed", "callbacks.hrsa.save_features=false", ckpt_path="last")
    assert not [w for w in caught if "not resumable" in w], caught
    assert resumed["steps"] == straight["steps"] == 6
    assert abs(resumed["final_loss"] - straight["final_loss"]) < 1e-6  # the same batches, in the same order
    assert resumed["initial_val"] == straight["initial_val"] != {}
    a, b = _realignment(tmp_path / "straight"), _realignment(tmp_path / "resumed")
    assert b[4]["cka_vs_init"] < 1.0  # compared with the real step 0, not with the first step after resuming
    assert abs(a[6]["cka_vs_init"] - b[6]["cka_vs_init"]) < 1e-6


def test_resume_continues_the_same_wandb_run(train_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    _run(train_cfg, out, "logger=wandb", "callbacks.hrsa.enabled=false", stop_at=2)
    import wandb

    wandb.finish()
    _run(train_cfg, out, "logger=wandb", "callbacks.hrsa.enabled=false", ckpt_path="last")
    wandb.finish()
    run_id = json.loads((out / "logger_ids.json").read_text())["wandb"]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)


# ---------------------------------------------------------------------------------------------- bad input
def test_truncated_checkpoint_names_the_file(train_cfg, tmp_path):
    from reasoning_embed.training.preflight import CheckpointError

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    from reasoning_embed.train import train

    cfg = train_cfg()
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    with pytest.raises(CheckpointError, match=str(ckpt)):
        train(cfg)


@pytest.mark.parametrize("content, expected", [
    (b'{"query": ["i", "q"], "pos": ["p"]}\n{"query": ["i", "caf\xe9"], "pos": ["p"]}\n', "line 2: not UTF-8 text: byte 0xe9 at byte offset 56"),
    (b'{"query": "a string", "pos": ["p"]}\n', "line 1: key 'query': expected [instruction, text]"),
    (b'{"query": ["i", "q"], "pos": ["p"]}\n{"query": ["i", "q"]\n', "line 2: not valid JSON"),
    (b'{"query": ["i", "q"]}\n', "line 1: key 'pos': missing"),
    (b"", "no usable rows"),
])
def test_bad_training_file_is_one_line_before_any_model_is_built(tmp_path, content, expected, train_cfg):
    from reasoning_embed.errors import DataFormatError
    from reasoning_embed.train import train

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    cfg = train_cfg()
    with open_dict(cfg):
        cfg.data.offline_corpus = None
        cfg.data.train = str(bad)
        cfg.backbone.path = str(tmp_path / "no_such_backbone")  # had a model been built first, this would fail
    with pytest.raises(DataFormatError) as e:
        train(cfg)
    assert str(bad) in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_file_error_is_printed_once(micro_backbone, corpus_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [*synthetic_rows(3), '{"query": ["i", "q"]}'])
    proc = subprocess.run(_cli_args(micro_backbone, corpus_dir, tmp_path / "run", f"data.train={bad}",
                                    "data.offline_corpus=null"),
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2 and both.count("key 'pos': missing") == 1, both[-2000:]
    assert "Traceback" not in both
    assert "key 'pos': missing" in (tmp_path / "run" / "train.log").read_text()  # and kept in the run's log


def test_mining_says_where_it_resumes(tmp_path, caplog):
    import numpy as np

    from reasoning_embed.mining.store import embed_table

    texts = [f"text {i}" for i in range(10)]

    def stop(name, b, n):
        if b == 1:
            raise KeyboardInterrupt

    encode = lambda idx: np.ones((len(idx), 4))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        embed_table(tmp_path, "passages", texts, encode, 4, 2, "k", progress=False, on_batch=stop)
    with caplog.at_level("INFO"):
        embed_table(tmp_path, "passages", texts, encode, 4, 2, "k", progress=False)
    assert "passages: resuming at batch 3 of 5" in caplog.text


def test_mine_ctrl_c_is_one_line_not_a_traceback(tmp_path):
    code = ("import runpy, reasoning_embed.mining.mine as m\n"
            "def mine(*a, **k): raise KeyboardInterrupt  # Ctrl-C while encoding\n"
            "m.mine = mine\nrunpy.run_module('reasoning_embed.mine', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, "input=x", "output=y", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr and "resume" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------- logs
def test_logs_once_without_library_noise_and_a_true_progress_total(micro_backbone, corpus_dir, tmp_path):
    args = [a for a in _cli_args(micro_backbone, corpus_dir, tmp_path / "run") if a != "callbacks.progress=null"]
    proc = subprocess.run(args + ["callbacks.progress.refresh_rate=1"], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=600)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both[-3000:]
    assert both.count("`Trainer.fit` stopped") == 1 and both.count("run directory:") == 1
    for noise in ("faiss.loader", "anonymous setting", "Tip:", "Seed set", "GPU available:", "TPU available:",
                  "HPU available:"):
        assert noise not in both, noise
    assert "4/4" in both and "/1691" not in both  # debug=fast: 4 steps


def test_typo_in_an_override_suggests_the_existing_key(micro_backbone, corpus_dir, tmp_path):
    proc = subprocess.run(_cli_args(micro_backbone, corpus_dir, tmp_path / "run", "trainer.max_step=3"),
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert "did you mean trainer.max_steps?" in proc.stderr and "+trainer.max_step" not in proc.stderr, proc.stderr


def test_an_existing_key_whose_override_fails_is_not_called_missing(capsys):
    from reasoning_embed.utils.hydra_utils import check_override_keys

    with pytest.raises(SystemExit) as exit_:  # a dict merged into a dict that has no such name
        check_override_keys("train", ["data.prepare={no_such_name:1}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "data.prepare is a key of the train config" in err and "data.prepare.NAME=VALUE" in err, err


def test_readme_commands_parse_as_hydra_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")  # continued lines joined
    code = text.split("```")[1::2]  # inside code blocks
    commands = [line.split("   #")[0] for block in code for line in block.splitlines()
                if "python -m reasoning_embed." in line]
    assert any("instruction=" in c and "," in c for c in commands)  # the example with a comma is there
    for command in commands:
        words = shlex.split(re.sub(r"<[^>]*>", "X", command))  # placeholders such as <run dir>
        args = words[words.index("-m") + 2:]
        overrides = parser.parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
        if "-m" not in args:  # outside a sweep, an unquoted comma would silently turn a value into a list
            assert not [o.input_line for o in overrides if o.is_sweep_override()], command


# ---------------------------------------------------------------------------------------------- collapse
def test_embedding_spread_against_definitions():
    from reasoning_embed.training.spread import embedding_spread, is_collapsed

    torch.manual_seed(0)
    x = torch.randn(64, 16)
    s = embedding_spread(x)
    n = torch.nn.functional.normalize(x.double(), dim=-1)
    cos = n @ n.T
    assert abs(s["mean_cosine"] - float((cos.sum() - 64) / (64 * 63))) < 1e-9
    sv = torch.linalg.svdvals(n)
    p = sv / sv.sum()
    assert abs(s["effective_rank"] - float(torch.exp(-(p * p.log()).sum()))) < 1e-9
    d2 = torch.cdist(n, n) ** 2
    off = d2[~torch.eye(64, dtype=torch.bool)]
    assert abs(s["uniformity"] - float(torch.log(torch.exp(-2 * off).mean()))) < 1e-6
    collapsed = torch.ones(64, 16) + 1e-3 * torch.randn(64, 16)
    assert is_collapsed(embedding_spread(collapsed)) and not is_collapsed(s)


def test_validation_warns_when_embeddings_collapse(caplog):
    from types import SimpleNamespace

    from reasoning_embed.training.module import ContrastiveModule

    torch.manual_seed(0)
    direction = torch.randn(16)

    class StubEncoder(torch.nn.Module):
        spread = 1.0

        def encode(self, texts, instructions=None, batch_size=64, is_query=None):
            return direction + self.spread * torch.randn(len(texts), 16)

    encoder = StubEncoder()
    module = ContrastiveModule(encoder, optimizer=None)
    val = [SimpleNamespace(corpus=[f"passage {i}" for i in range(40)])]
    with caplog.at_level("WARNING"):
        healthy = module._spread(val)
        assert not module.collapsed and "COLLAPSED" not in caplog.text
        encoder.spread = 1e-3  # every passage on one direction
        collapsed = module._spread(val)
    assert module.collapsed and caplog.text.count("COLLAPSED") == 1
    assert collapsed["val/spread/mean_cosine"] > 0.99 > healthy["val/spread/mean_cosine"]
    assert collapsed["val/spread/effective_rank"] < healthy["val/spread/effective_rank"]


def test_report_lists_an_interrupted_run_as_interrupted(tmp_path):
    from reasoning_embed.report.runs import collect_runs

    dirs = []
    for name, files in [("interrupted", {"interrupted.json": {"signal": "SIGTERM", "step": 7, "resume": "python -m x"}}),
                        ("failed", {"failed.json": {"error": "RuntimeError: boom"}}),
                        ("trained_only", {"metrics.json": {"status": "trained"}})]:
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text("backbone: {name: b}\nfinetune: {mode: full}\nseed: 1\n")
        for fname, obj in files.items():
            (run / fname).write_text(json.dumps(obj))
        dirs.append(run)
    runs, not_done = collect_runs(dirs)
    status = {Path(f["dir"]).name: (f["status"], f["reason"]) for f in not_done}
    assert not runs and status["interrupted"][0] == "interrupted" and "resume: python -m x" in status["interrupted"][1]
    assert status["failed"] == ("failed", "RuntimeError: boom") and status["trained_only"][0] == "unfinished"


# ---------------------------------------------------------------------------------------------- caches
def test_a_copied_checkout_reuses_the_mined_corpus(corpus_dir, micro_backbone, tmp_path, monkeypatch):
    import shutil

    import reasoning_embed.mining.offline as offline
    from reasoning_embed.assets.corpus import mined_corpus

    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(corpus_dir, here / "outputs" / "data" / "stdlib")
    shutil.copytree(micro_backbone, here / "venv" / "reference")
    first = mined_corpus(here / "outputs" / "data" / "stdlib", reference=str(here / "venv" / "reference"),
                         max_length=32, progress=False, build_corpus=False)
    shutil.copytree(here, there)  # the whole project, reference model included, somewhere else

    def mine_again(*a, **k):
        raise AssertionError("the copied checkout mined its corpus again")

    monkeypatch.setattr(offline, "mine_offline_corpus", mine_again)
    again = mined_corpus(there / "outputs" / "data" / "stdlib", reference=str(there / "venv" / "reference"),
                         max_length=32, progress=False, build_corpus=False)
    assert again.parent == there / "outputs" / "data" and again.name == first.name


def test_a_run_that_made_retrieval_worse_says_so(caplog):
    from reasoning_embed.train import _final_lines

    # the figures of `experiment=offline_default debug=fast trainer.max_steps=30 data=offline_random`
    metrics = {"initial_val": {"val/ndcg@10": 0.0877, "val/spread/mean_cosine": 0.18},
               "final_val": {"val/ndcg@10": 0.0, "val/spread/mean_cosine": 0.86}, "collapsed": False}
    with caplog.at_level("WARNING"):
        _final_lines(metrics, Path("run"))
    assert "WORSE" in caplog.text and "0.0877 -> 0.0000" in caplog.text and "0.1800 -> 0.8600" in caplog.text
    caplog.clear()
    metrics["final_val"]["val/ndcg@10"] = 0.2
    with caplog.at_level("WARNING"):
        _final_lines(metrics, Path("run"))
    assert "WORSE" not in caplog.text
