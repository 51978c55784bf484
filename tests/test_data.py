"""The training format: every bad input is named (file, line, key); policies are explicit and counted."""

import json
from collections import Counter

import pytest

from conftest import synthetic_rows, write_jsonl
from reasoning_embed.data.contrastive import ContrastiveDataset, MixtureBatchSampler, apply_no_negative_policy
from reasoning_embed.data.jsonl import data_files, read_jsonl
from reasoning_embed.errors import DataFormatError

GOOD = {"query": ["inst", "a query"], "pos": ["a passage"], "neg": ["n1"]}


@pytest.mark.parametrize("bad, key, expected", [
    ('{"query": ["i", "q"], "pos": ["p"]', None, "not valid JSON"),
    ({"pos": ["p"]}, "query", "missing"),
    ({"query": 5, "pos": ["p"]}, "query", r"\[instruction, text\]"),
    ({"query": ["i", "q", "x"], "pos": ["p"]}, "query", r"\[instruction, text\]"),
    ({"query": ["i", "  "], "pos": ["p"]}, "query", "empty query text"),
    ({"query": ["i", "q"]}, "pos", "missing"),
    ({"query": ["i", "q"], "pos": []}, "pos", "empty list"),
    ({"query": ["i", "q"], "pos": {"a": 1}}, "pos", "expected a list of strings"),
    ({"query": ["i", "q"], "pos": ["p", 3]}, "pos[1]", "expected a string"),
    ({"query": ["i", "q"], "pos": [""]}, "pos[0]", "empty text"),
    ({"query": ["i", "q"], "pos": ["p"], "neg": [None]}, "neg[0]", "expected a string"),
    ([1, 2], None, "expected a JSON object"),
])
def test_bad_row_error_names_file_line_and_key(tmp_path, bad, key, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(DataFormatError, match=expected) as err:
        read_jsonl(path)
    assert err.value.line == 3 and str(path) in str(err.value)
    assert err.value.key == key
    if key:
        assert repr(key) in str(err.value)


def test_skip_policy_counts_skipped_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "{broken", {"query": ["i", "q"]}, GOOD])
    rows, report = read_jsonl(path, bad_rows="skip")
    assert len(rows) == 2 and report.skipped == 2
    assert "line 2" in report.errors[0] and "line 3" in report.errors[1]


def test_missing_empty_and_all_bad_files(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    empty = write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(DataFormatError, match="no usable rows"):
        read_jsonl(empty)
    with pytest.raises(DataFormatError, match="no \\*.jsonl"):
        data_files(tmp_path / "sub") if (tmp_path / "sub").mkdir() is None else None


def test_no_negative_policies(tmp_path):
    rows, _ = read_jsonl(write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "pos": ["another passage"], "neg": []}]))
    kept, dropped = apply_no_negative_policy(rows, "drop", "d.jsonl")
    assert len(kept) == 1 and dropped == 1
    with pytest.raises(DataFormatError, match="no_negative_policy"):
        apply_no_negative_policy(rows, "error", "d.jsonl")
    kept, dropped = apply_no_negative_policy(rows, "in_file", "d.jsonl")
    ds = ContrastiveDataset([kept], num_negatives=3)
    item = ds[(1, 0)]
    assert len(item["passages"]) == 4  # in-file passages stand in for the missing negatives


def test_in_file_never_draws_a_rows_own_positive(tmp_path):
    """On a 4-row file the old draw (any row, itself included) handed a query its own positive 118 times in 200."""
    rows = [{"query": ["i", f"q{i}"], "pos": [f"p{i}"], "neg": []} for i in range(3)]
    rows.append({"query": ["i", "q3"], "pos": ["p0"], "neg": []})         # shares row 0's positive text
    kept, _ = apply_no_negative_policy(read_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))[0], "in_file", "d.jsonl")
    ds = ContrastiveDataset([kept], num_negatives=3)
    for index in range(4):
        for epoch in range(50):
            item = ds[(index, epoch)]
            assert item["passages"][0] not in item["passages"][1:], (index, epoch, item["passages"])


def test_negatives_topped_up_with_repetition_and_random_positive(tmp_path):
    row = {"query": ["i", "q"], "pos": ["p1", "p2", "p3"], "neg": ["only"]}
    rows, _ = read_jsonl(write_jsonl(tmp_path / "d.jsonl", [row]))
    ds = ContrastiveDataset([rows], num_negatives=3, seed=0)
    items = [ds[(0, e)] for e in range(30)]
    assert all(it["passages"][1:] == ["only"] * 3 for it in items)
    assert {it["passages"][0] for it in items} == {"p1", "p2", "p3"}  # a random positive per step
    assert ds[(0, 5)] == ds[(0, 5)]  # deterministic per (index, epoch)


def test_each_batch_comes_from_one_file_where_possible():
    sampler = MixtureBatchSampler([10, 7], batch_size=4, seed=0)
    batches = [[i for i, _ in b] for b in sampler]
    assert len(batches) == len(sampler) == 4  # 2 + 1 single-file batches + 1 from pooled leftovers
    single = [b for b in batches if all(i < 10 for i in b) or all(i >= 10 for i in b)]
    assert len(single) >= 3
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))


def test_ranks_split_the_same_global_batch():
    full = list(MixtureBatchSampler([16, 8], batch_size=4, world_size=1, seed=3))
    r0 = list(MixtureBatchSampler([16, 8], batch_size=2, world_size=2, rank=0, seed=3))
    r1 = list(MixtureBatchSampler([16, 8], batch_size=2, world_size=2, rank=1, seed=3))
    assert [a + b for a, b in zip(r0, r1)] == full


def _rows_per_file(batches, sizes):
    bounds = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    return Counter(next(f for f, b in enumerate(bounds) if i < b) for batch in batches for i in batch)


@pytest.mark.parametrize("weights", [[2.0, 1.0], [3.5, 0.5], [1.0, 0.0], [0.25, 2.0]])
def test_file_weights_set_each_files_share_and_keep_batches_free_of_repeats(weights):
    sizes, g = [42, 26], 4  # not multiples of g: extra batches cut across two shuffles would repeat rows
    sampler = MixtureBatchSampler(sizes, batch_size=g, seed=5, file_weights=weights)
    batches = [[i for i, _ in b] for b in sampler]
    assert len(batches) == len(sampler)
    assert all(len(set(b)) == len(b) == g for b in batches)  # a row is never its own in-batch negative
    counts = _rows_per_file(batches, sizes)
    for f, (n, w) in enumerate(zip(sizes, weights)):  # round(n * w) rows, less at most the pooled remainder
        assert round(n * w) - g < counts[f] <= round(n * w)
    if min(weights) > 0:
        ratio = counts[0] / counts[1]
        target = sizes[0] * weights[0] / (sizes[1] * weights[1])
        assert abs(ratio - target) / target < 0.25
    seen = {i for b in batches for i in b}
    for f in [f for f, w in enumerate(weights) if w >= 1]:  # every row at weight >= 1 is trained on, but for
        lo = sum(sizes[:f])                                  # part of the pooled remainder (as unweighted)
        assert len(set(range(lo, lo + sizes[f])) - seen) < g


@pytest.mark.parametrize("seed", range(10))
def test_a_small_file_at_a_large_weight_never_repeats_a_row_in_a_batch(seed):
    batches = [[i for i, _ in b] for b in MixtureBatchSampler([6, 26], batch_size=4, seed=seed, file_weights=[10, 1])]
    assert 0 <= _rows_per_file(batches, [6, 26])[0] - (6 // 4 * 4 + round(6 * 9) // 4 * 4) < 4  # + its remainder
    assert all(len(set(b)) == len(b) for b in batches)


def test_unit_file_weights_keep_the_unweighted_order():
    plain = list(MixtureBatchSampler([10, 7], batch_size=4, seed=2))
    assert list(MixtureBatchSampler([10, 7], batch_size=4, seed=2, file_weights=[1, 1])) == plain


def test_ranks_split_the_same_weighted_global_batch():
    kw = dict(seed=4, file_weights=[2.0, 0.5])
    full = list(MixtureBatchSampler([16, 8], batch_size=4, world_size=1, **kw))
    r0 = list(MixtureBatchSampler([16, 8], batch_size=2, world_size=2, rank=0, **kw))
    r1 = list(MixtureBatchSampler([16, 8], batch_size=2, world_size=2, rank=1, **kw))
    assert [a + b for a, b in zip(r0, r1)] == full


@pytest.mark.parametrize("weights, match", [([1.0], "one per file"), ([-1.0, 1.0], ">= 0"),
                                            ([1.0, float("nan")], ">= 0"), ([float("inf"), 1.0], "finite"),
                                            ([1.0, 2.0], "file 1 has 3 rows")])
def test_bad_file_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        MixtureBatchSampler([10, 3], batch_size=4, file_weights=weights)


def test_datamodule_weights_files_by_name_and_reports_them(tmp_path):
    from reasoning_embed.data.datamodule import ContrastiveDataModule
    from reasoning_embed.errors import ConfigValueError

    write_jsonl(tmp_path / "mix" / "code.jsonl", synthetic_rows(16, "c"))
    write_jsonl(tmp_path / "mix" / "docstring.jsonl", synthetic_rows(8, "d"))
    dm = ContrastiveDataModule(train=str(tmp_path / "mix"), batch_size=4, num_negatives=1,
                               file_weights={"docstring": 3}, report_dir=str(tmp_path))
    dm.setup()
    assert dm.sampler.file_weights == [1.0, 3.0]
    assert len(dm.sampler) == 4 + 2 + 4  # code once, docstring once + 16 extra rows
    report = json.loads((tmp_path / "data_report.json").read_text())["train"]
    assert {k.rsplit("/", 1)[-1]: v["weight"] for k, v in report.items()} == {"code.jsonl": 1.0, "docstring.jsonl": 3.0}
    for bad, match in [({"docstrings": 2}, r"\['docstrings'\].*\['code', 'docstring'\]"),
                       ({"code": "two"}, "data.file_weights.code: expected a finite number >= 0"),
                       ({"code": float("inf")}, "data.file_weights.code: expected a finite number")]:
        with pytest.raises(ConfigValueError, match=match):
            ContrastiveDataModule(train=str(tmp_path / "mix"), batch_size=4, file_weights=bad).setup()


def test_sampler_skip_resumes_mid_epoch():
    s = MixtureBatchSampler([20], batch_size=4, seed=1)
    all_batches = list(s)
    s.skip = 2
    assert list(s) == all_batches[2:]


def test_stdlib_corpus_is_deterministic_split_by_module(corpus_dir):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["counts"]["train/code"] > 1000 and manifest["counts"]["val/code"] > 100
    labels = {}
    for split in ("train", "val", "test"):
        rows, _ = read_jsonl(corpus_dir / split / "code.jsonl")
        labels[split] = {r.extra["label"] for r in rows}
    assert not labels["train"] & labels["val"] and not labels["train"] & labels["test"]
    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus
    before = (corpus_dir / "val" / "code.jsonl").read_text()
    build_stdlib_corpus(corpus_dir, force=True)
    assert (corpus_dir / "val" / "code.jsonl").read_text() == before


def test_mixture_directory_reads_every_file(tmp_path):
    write_jsonl(tmp_path / "mix" / "a.jsonl", synthetic_rows(4, "a"))
    write_jsonl(tmp_path / "mix" / "b.jsonl", synthetic_rows(4, "b"))
    assert [p.name for p in data_files(tmp_path / "mix")] == ["a.jsonl", "b.jsonl"]
    counts = Counter(len(read_jsonl(p)[0]) for p in data_files(tmp_path / "mix"))
    assert counts == {4: 2}
