"""Converters to the training format: each layout on a small fixture, instructions per source, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from reasoning_embed.data.jsonl import read_jsonl
from reasoning_embed.errors import DataFormatError, ReasoningEmbedError
from reasoning_embed.mining.convert import convert
from reasoning_embed import CONF_DIR

FIX = ROOT / "tests" / "fixtures" / "mining"
INST = "Given a question, retrieve the answer"


def rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_sentence_transformers_csv(tmp_path):
    rep = convert("st", FIX / "st.csv", tmp_path / "st.jsonl", instruction=INST)
    out = rows(tmp_path / "st.jsonl")
    assert out == [
        {"query": [INST, "how do I sort a list"], "pos": ["Use sorted(xs) or xs.sort(), which sorts in place."],
         "neg": ["Use reversed(xs) to iterate backwards.", "A list is a mutable sequence, written [1, 2]."]},
        {"query": [INST, "what is a dict"], "pos": ['A dict maps keys to values, written {"a": 1}.'],
         "neg": ["A set holds unique items."]},  # an empty cell is no negative
        {"query": [INST, "multi-line\nanchor"], "pos": ["A positive with a comma, and more text."],
         "neg": ["A negative."]},
    ]
    assert rep["sources"][str(FIX / "st.csv")]["rows"] == 3
    read_jsonl(tmp_path / "st.jsonl")  # valid training format


def test_sentence_transformers_parquet_and_datasets_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {"anchor": ["q1", "q2"], "positive": ["p1", "p2"], "negative_1": ["n1", None], "negative_2": ["n2", "m2"]}
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    convert("st", tmp_path / "t.parquet", tmp_path / "p.jsonl", instruction="I")
    expected = [{"query": ["I", "q1"], "pos": ["p1"], "neg": ["n1", "n2"]},
                {"query": ["I", "q2"], "pos": ["p2"], "neg": ["m2"]}]
    assert rows(tmp_path / "p.jsonl") == expected

    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(tmp_path / "ds"))
    convert("st", tmp_path / "ds", tmp_path / "d.jsonl", instruction="I")
    assert rows(tmp_path / "d.jsonl") == expected
    with pytest.raises(DataFormatError, match="split 'dev' not found"):
        convert("st", tmp_path / "ds", tmp_path / "d.jsonl", instruction="I", split="dev")


def test_instructions_per_source_file(tmp_path):
    rep = convert("st", FIX / "st_dir", tmp_path / "out", instructions=FIX / "instructions.yaml")
    a, b = rows(tmp_path / "out" / "a.jsonl"), rows(tmp_path / "out" / "b.jsonl")
    assert a == [{"query": ["Given a task, retrieve the Python code that does it", "open a file"],
                  "pos": ["with open(path) as f: ..."], "neg": ["os.remove(path) deletes a file"]}]
    assert [r["query"][0] for r in b] == [INST, INST]  # "default" of the mapping
    assert b[0]["neg"] == ["str.split breaks a string", "len(s) counts characters"] and b[1]["neg"] == ["math.pow(x, 2)"]
    assert {v["instruction"] for v in rep["sources"].values()} == {INST, a[0]["query"][0]}
    # a mapping given inline; a source it does not name and no fallback is an error naming the source
    with pytest.raises(ReasoningEmbedError, match="no instruction for source 'b.jsonl'"):
        convert("st", FIX / "st_dir", tmp_path / "out2", instructions={"a.csv": "A"})
    convert("st", [FIX / "st_dir" / "a.csv", FIX / "st_dir" / "b.jsonl"], tmp_path / "out3",
            instructions={"a.csv": "A"}, instruction="B")
    assert rows(tmp_path / "out3" / "a.jsonl")[0]["query"][0] == "A"
    assert rows(tmp_path / "out3" / "b.jsonl")[0]["query"][0] == "B"


def test_beir(tmp_path):
    rep = convert("beir", FIX / "beir", tmp_path / "beir.jsonl", instruction=INST)
    assert rows(tmp_path / "beir.jsonl") == [
        {"query": [INST, "capital of France"], "pos": ["Paris Paris is the capital of France."],
         "neg": ["Lyon Lyon is a city in France."], "id": "q1"},  # score 0 = judged negative
        {"query": [INST, "capital of Germany"], "pos": ["Berlin is the capital of Germany."], "neg": [], "id": "q2"},
    ]
    assert rep["sources"][str(FIX / "beir")]["skipped_no_positive"] == 1  # q3: only a 0 judgement
    convert("beir", FIX / "beir", tmp_path / "b2.jsonl", instruction=INST, beir_zero_as_negative=False,
            title_separator="\n")
    assert rows(tmp_path / "b2.jsonl")[0] == {"query": [INST, "capital of France"],
                                              "pos": ["Paris\nParis is the capital of France."], "neg": [], "id": "q1"}


def test_beir_directory_of_datasets(tmp_path):
    for name in ("nfcorpus", "scifact"):
        shutil.copytree(FIX / "beir", tmp_path / "beir" / name)
    convert("beir", tmp_path / "beir", tmp_path / "out", instructions={"nfcorpus": "N", "default": "D"})
    assert rows(tmp_path / "out" / "nfcorpus.jsonl")[0]["query"][0] == "N"
    assert rows(tmp_path / "out" / "scifact.jsonl")[0]["query"][0] == "D"


def test_tevatron(tmp_path):
    convert("tevatron", FIX / "tevatron.jsonl", tmp_path / "t.jsonl", instructions={"tevatron": "T"})
    assert rows(tmp_path / "t.jsonl") == [
        {"query": ["T", "who wrote hamlet"], "pos": ["Hamlet Hamlet is a tragedy by William Shakespeare."],
         "neg": ["Macbeth is a tragedy.", "Othello Othello is a play."], "id": "7"},
        {"query": ["T", "largest planet"], "pos": ["Jupiter Jupiter is the largest planet.", "Jupiter is a gas giant."],
         "neg": [], "id": "8"},
    ]


def _copy_beir(tmp_path):
    d = tmp_path / "beir"
    shutil.copytree(FIX / "beir", d)
    return d


@pytest.mark.parametrize("fmt, make, line, key, what", [
    ("tevatron", lambda d: (d / "t.jsonl", '{"query": "q", "positive_passages": [{"text": "p"}]}\n{"query": "q2"\n'),
     2, None, "not valid JSON"),
    ("tevatron", lambda d: (d / "t.jsonl", '{"query": "q", "positive_passages": [{"text": "p"}]}\n'
                                           '{"positive_passages": [{"text": "p"}]}\n'), 2, "query", "missing"),
    ("tevatron", lambda d: (d / "t.jsonl", '{"query": "q", "positive_passages": []}\n'), 1, "positive_passages",
     "missing or empty"),
    ("st", lambda d: (d / "s.jsonl", '{"anchor": "a", "positive": "p"}\n{"anchor": "b", "positive": ""}\n'), 2,
     "positive", "empty text"),
    ("st", lambda d: (d / "s.csv", "anchor,negative\nq,n\n"), 2, "positive", "column missing"),
    ("st", lambda d: (d / "s.csv", "anchor,positive\nq,p\n\"multi\nline\",\n"), 3, "positive", "empty text"),
])
def test_malformed_input_names_file_and_line(tmp_path, fmt, make, line, key, what):
    path, text = make(tmp_path)
    path.write_text(text)
    with pytest.raises(DataFormatError, match=what) as err:
        convert(fmt, path, tmp_path / "out.jsonl", instruction="I")
    assert err.value.line == line and err.value.key == key and str(path) in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_beir_errors(tmp_path):
    d = _copy_beir(tmp_path)
    (d / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match="empty corpus") as err:
        convert("beir", d, tmp_path / "o.jsonl", instruction="I")
    assert str(d / "corpus.jsonl") in str(err.value)
    d = _copy_beir(tmp_path / "2")
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(DataFormatError, match="'d9' is not in corpus.jsonl") as err:
        convert("beir", d, tmp_path / "o.jsonl", instruction="I")
    assert err.value.line == 3
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": 5}\n')
    with pytest.raises(DataFormatError, match="expected a string") as err:
        convert("beir", d, tmp_path / "o.jsonl", instruction="I")
    assert err.value.line == 2 and err.value.key == "text"


def test_convert_cli(tmp_path):
    from hydra import compose, initialize_config_dir

    from reasoning_embed.convert import run

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="convert", overrides=[
            "format=tevatron", f"input={FIX / 'tevatron.jsonl'}", f"output={tmp_path / 'o'}",
            f"instruction_map={FIX / 'instructions.yaml'}"])
    rep = run(cfg)
    out = rows(tmp_path / "o" / "tevatron.jsonl")
    assert len(out) == 2 and out[0]["query"][0] == INST
    assert list(rep["sources"].values())[0]["rows"] == 2
