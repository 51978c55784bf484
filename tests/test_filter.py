"""The margin filter keeps what it says: a LARGER margin is an easier row; min_margin drops hard rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_jsonl
from reasoning_embed.mining.margin_filter import filter_file
from reasoning_embed.mining.reference import Reference
from reasoning_embed import CONF_DIR


pytestmark = pytest.mark.usefixtures("one_thread")


class TableReference(Reference):
    """A fake reference with chosen geometry: text -> unit vector in the plane, queries at angle 0,
    so cos(query, text) is exactly the number the text was given."""

    kind, name, fingerprint, dim = "fake", "table", "table-v1", 2

    def __init__(self, cosines: dict[str, float]):
        self.cosines = cosines

    def encode(self, texts, instructions=None, is_query=False):
        out = []
        for t in texts:
            c = 1.0 if is_query else self.cosines[t]
            out.append([c, np.sqrt(max(0.0, 1 - c * c))])
        return np.asarray(out, dtype=np.float32)


# margin = cos(q,pos) - max cos(q,neg):  easy 0.9-0.2=0.7, medium 0.6-0.4=0.2, hard 0.5-0.48=0.02,
# false negative 0.5-0.7=-0.2 (a "negative" closer than the positive)
ROWS = [
    ("easy", 0.9, [0.2, 0.1]),
    ("medium", 0.6, [0.4]),
    ("hard", 0.5, [0.48, 0.3]),
    ("falseneg", 0.5, [0.7]),
]


@pytest.fixture
def data(tmp_path):
    cos, rows = {}, []
    for name, pos, negs in ROWS:
        cos[f"{name} pos"] = pos
        rows.append({"query": ["inst", f"{name} query"], "pos": [f"{name} pos"],
                     "neg": [f"{name} neg {i}" for i in range(len(negs))], "id": name})
        cos.update({f"{name} neg {i}": c for i, c in enumerate(negs)})
    cos["lonely pos"] = 0.8
    rows.append({"query": ["inst", "lonely query"], "pos": ["lonely pos"], "neg": [], "id": "lonely"})
    return write_jsonl(tmp_path / "in.jsonl", rows), TableReference(cos)


def ids(path):
    return [json.loads(x)["id"] for x in Path(path).read_text().splitlines()]


def test_min_margin_drops_hard_and_false_negative_rows(data, tmp_path):
    path, ref = data
    out = tmp_path / "out.jsonl"
    rep = filter_file(path, out, ref, min_margin=0.1, record_margin=True, progress=False)
    assert ids(out) == ["easy", "medium"]  # larger margin = easier: these survive a min_margin
    assert rep["dropped_below_min_margin"] == 2 and rep["dropped_no_negative"] == 1
    margins = [json.loads(x)["margin"] for x in out.read_text().splitlines()]
    assert margins == pytest.approx([0.7, 0.2], abs=1e-6)


def test_max_margin_drops_easy_rows(data, tmp_path):
    path, ref = data
    out = tmp_path / "out.jsonl"
    rep = filter_file(path, out, ref, max_margin=0.1, progress=False)
    assert ids(out) == ["hard", "falseneg"]
    assert rep["dropped_above_max_margin"] == 2
    filter_file(path, out, ref, min_margin=0.0, max_margin=0.5, progress=False)
    assert ids(out) == ["medium", "hard"]
    filter_file(path, out, ref, progress=False)  # no bounds: every row with a margin
    assert ids(out) == ["easy", "medium", "hard", "falseneg"]


def test_cap_strategies_and_no_negative_policy(data, tmp_path):
    path, ref = data
    out = tmp_path / "out.jsonl"
    filter_file(path, out, ref, max_rows=2, cap="highest_margin", progress=False)
    assert ids(out) == ["easy", "medium"]
    filter_file(path, out, ref, max_rows=2, cap="lowest_margin", progress=False)
    assert ids(out) == ["hard", "falseneg"]
    picks = set()
    for seed in range(6):
        rep = filter_file(path, out, ref, max_rows=2, cap="random", seed=seed, progress=False)
        got = ids(out)
        assert len(got) == 2 and rep["dropped_by_cap"] == 2
        order = ["easy", "medium", "hard", "falseneg"]
        assert got == sorted(got, key=order.index)  # input order kept
        picks.add(tuple(got))
        filter_file(path, tmp_path / "again.jsonl", ref, max_rows=2, cap="random", seed=seed, progress=False)
        assert ids(tmp_path / "again.jsonl") == got  # seeded
    assert len(picks) > 1
    filter_file(path, out, ref, min_margin=0.1, no_negative="keep", progress=False)
    assert ids(out) == ["easy", "medium", "lonely"]


def test_help_and_config_state_the_direction():
    help_text = subprocess.run([sys.executable, "-m", "reasoning_embed.filter", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    assert "Rows with a LARGER margin are easier; min_margin drops hard/likely-false-negative rows" in help_text
    conf = (CONF_DIR / "filter.yaml").read_text()
    assert "Rows with a LARGER margin are EASIER" in conf and "DROPS hard / likely-false-negative rows" in conf


def test_filter_cli_with_a_real_reference(micro_backbone, corpus_dir, tmp_path):
    """Composed Hydra config + the micro model: margins recorded equal an independent computation."""
    from hydra import compose, initialize_config_dir

    from reasoning_embed.filter import run
    from reasoning_embed.models.encoder import build_encoder

    rows = [json.loads(x) for x in (corpus_dir / "val" / "code.jsonl").read_text().splitlines()[:40]]
    src = write_jsonl(tmp_path / "code.jsonl", rows)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="filter", overrides=[
            f"input={src}", f"output={tmp_path / 'kept.jsonl'}", f"reference={micro_backbone}", "max_length=32",
            "record_margin=true", "min_margin=0.0", "progress=false"])
    rep = run(cfg)
    kept = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert rep["rows_in"] == 40 and rep["rows_out"] == len(kept) == 40 - rep["dropped_below_min_margin"]
    enc = build_encoder({"path": str(micro_backbone)}, max_query_length=32, max_passage_length=32)
    q = enc.encode([r["query"][1] for r in kept], None, is_query=True)
    texts = sorted({t for r in kept for t in r["pos"] + r["neg"]})
    sims = (q @ enc.encode(texts).T).numpy()
    col = {t: i for i, t in enumerate(texts)}
    for j, row in enumerate(kept):
        margin = max(sims[j, col[p]] for p in row["pos"]) - max(sims[j, col[n]] for n in row["neg"])
        assert row["margin"] == pytest.approx(float(margin), abs=1e-5) and row["margin"] >= 0.0
