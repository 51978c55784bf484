"""The assets layer: built-on-first-use artefacts keyed by the hash of their full spec."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import MICRO
from reasoning_embed.assets import build_once, spec_hash, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"variant": "random", "foundry": False, "seed": 0, **MICRO, "tokenizer": "bpe"}


def test_changed_seed_or_size_never_returns_the_old_cache(corpus_dir, tmp_path):
    """Regression: backbone.tiny.seed=7 or another hidden_size used to return the cached model of the
    first spec (the cache key was "the directory exists")."""
    path = tmp_path / "backbones" / "tiny_random"
    first = tiny_backbone(path, TINY, corpus_dir)
    assert tiny_backbone(path, TINY, corpus_dir) == first  # the same spec: the cache
    seven = tiny_backbone(path, {**TINY, "seed": 7}, corpus_dir)
    wider = tiny_backbone(path, {**TINY, "hidden_size": 48}, corpus_dir)
    assert len({first, seven, wider}) == 3
    w0, w7 = load_file(first / "model.safetensors"), load_file(seven / "model.safetensors")
    assert any(not (w0[k] == w7[k]).all() for k in w0)
    assert json.loads((wider / "config.json").read_text())["hidden_size"] == 48
    assert json.loads((first / "config.json").read_text())["hidden_size"] == MICRO["hidden_size"]
    assert json.loads((seven / "asset.json").read_text())["spec"]["seed"] == 7


def test_residual_init_scale_scales_only_the_block_outputs_and_keys_its_own_cache(corpus_dir, tmp_path):
    path = tmp_path / "backbones" / "tiny_random"
    plain = tiny_backbone(path, TINY, corpus_dir)
    scaled = tiny_backbone(path, {**TINY, "residual_init_scale": 0.1}, corpus_dir)
    assert scaled != plain and "init" not in json.loads((plain / "asset.json").read_text())["spec"]
    w, s = load_file(plain / "model.safetensors"), load_file(scaled / "model.safetensors")
    for k in w:  # the same seed: every weight equal, the blocks' output projections at 0.1 x
        factor = 0.1 if k.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
        assert (s[k] - factor * w[k]).abs().max() < 1e-7, k
    assert any(k.endswith("o_proj.weight") for k in w) and any(k.endswith("down_proj.weight") for k in w)


def test_a_moved_checkout_reuses_its_caches(corpus_dir, tmp_path):
    """Cache keys hold identities (package version, corpus manifest), never absolute paths."""
    root_a = tmp_path / "a"
    shutil.copytree(corpus_dir, root_a / "data" / "stdlib")
    built = tiny_backbone(root_a / "backbones" / "tiny_random", TINY, root_a / "data" / "stdlib")
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    root_b = tmp_path / "b"
    shutil.move(str(root_a), str(root_b))
    again = tiny_backbone(root_b / "backbones" / "tiny_random", TINY, root_b / "data" / "stdlib")
    assert again == root_b / "backbones" / built.name
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # found, not rebuilt
    assert str(tmp_path) not in (again / "asset.json").read_text()


def test_build_once_builds_each_spec_once_and_leaves_no_partial_build(tmp_path):
    calls = []

    def build(staging):
        calls.append(staging)
        (staging / "x").write_text("done")

    a = build_once(tmp_path, "thing", {"k": 1}, build, log=lambda *_: None)
    assert build_once(tmp_path, "thing", {"k": 1}, build, log=lambda *_: None) == a and len(calls) == 1
    assert a.name == f"thing-{spec_hash({'k': 1})}" and (a / "x").read_text() == "done"

    def broken(staging):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        build_once(tmp_path, "thing", {"k": 2}, broken, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [a.name]  # nothing half-built remains
    killed = tmp_path / f".thing-{spec_hash({'k': 3})}-abc"  # the staging dir of a build that was killed
    killed.mkdir()
    build_once(tmp_path, "thing", {"k": 3}, build, log=lambda *_: None)
    assert not killed.exists()
