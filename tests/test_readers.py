"""The one JSONL reader: every reader names file, line and key on bad input (probe texts, BEIR directories)."""

import json

import pytest

from reasoning_embed.errors import DataFormatError
from reasoning_embed.training.hrsa_callback import load_probe_texts, read_probe_file


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_probe_file_rows_and_texts(tmp_path):
    p = _write(tmp_path / "probe.jsonl", [{"query": ["Find it", "q1"], "pos": ["p1", "p2"]}, "",
                                          {"text": "plain"}, {"query": ["", "q2"], "pos": "p3"}])
    texts, instr = read_probe_file(p)
    assert texts == ["q1", "p1", "plain", "q2", "p3"]
    assert instr == ["Find it", None, None, None, None]
    assert load_probe_texts(str(p), [], 3) == (texts[:3], instr[:3])
    txt = tmp_path / "probe.txt"
    txt.write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_probe_file(txt) == (["one", "two"], [None, None])


@pytest.mark.parametrize("bad, line, key", [
    ({"txt": "typo"}, 2, "text"),                          # neither text nor a training row
    ({"query": ["i", "q"]}, 2, "pos"),                     # a training row without positives
    ({"query": "bare"}, 2, "query"),
    ('{"text": "unterminated', 2, None),
])
def test_malformed_probe_file_names_file_line_and_key(tmp_path, bad, line, key):
    p = _write(tmp_path / "probe.jsonl", [{"text": "fine"}, bad])
    with pytest.raises(DataFormatError) as e:
        load_probe_texts(str(p), [], 8)
    assert (e.value.path.name if hasattr(e.value.path, "name") else str(e.value.path)).endswith("probe.jsonl")
    assert e.value.line == line and e.value.key == key
    assert f"probe.jsonl, line {line}" in str(e.value)
