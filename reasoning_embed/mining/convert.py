"""Converters from common retrieval layouts to the training format
``{"query": [instruction, text], "pos": [...], "neg": [...]}``.

- ``st``: sentence-transformers tables, columns ``anchor``, ``positive`` and ``negative`` /
  ``negative_1``, ``negative_2``, ... (names configurable), from CSV, JSONL, Parquet or a
  ``datasets`` directory saved with ``save_to_disk`` (a ``DatasetDict``: ``split`` picks one).
- ``beir``: a BEIR dataset directory (or a directory of them, one source each): ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
  (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``). Score > 0 is a
  positive; score <= 0 an (explicit) negative when ``beir_zero_as_negative``. Queries without a positive
  are skipped and counted.
- ``tevatron``: JSONL rows ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}],
  "negative_passages": [...]}``.

Titles are joined to texts as ``title + title_separator + text`` (empty titles are left out).

Instructions are assigned per source (one input file, or one BEIR dataset directory): ``instructions``
(a mapping, or a YAML/JSON file holding one) is looked up by the source's file name, then its stem
(name without extension), then ``default``; otherwise the single ``instruction``. A source with no
instruction is an error (pass ``instruction=""`` to mean "no instruction" deliberately).

Malformed input raises ``DataFormatError`` naming file and line (1-based line of a JSONL/CSV file;
data row number for Parquet/datasets).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Iterator

from reasoning_embed.data.jsonl import iter_json_lines
from reasoning_embed.errors import DataFormatError, ReasoningEmbedError
from reasoning_embed.utils.io import atomic_open

FORMATS = ("st", "beir", "tevatron")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


# ----------------------------------------------------------------------------------------- instructions
def load_instructions(instructions) -> dict[str, str]:
    if instructions is None:
        return {}
    if isinstance(instructions, (str, Path)):
        path = Path(instructions)
        if not path.is_file():
            raise ReasoningEmbedError(f"instructions file {path} not found (expected YAML/JSON: source -> instruction)")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise DataFormatError(path, None, None, "expected a mapping of source name -> instruction")
        instructions = data
    out = {}
    for k, v in dict(instructions).items():
        if not isinstance(v, str):
            raise ReasoningEmbedError(f"instruction for {k!r} must be a string, got {type(v).__name__}")
        out[str(k)] = v
    return out


def instruction_for(source: Path, mapping: dict[str, str], single: str | None) -> str:
    for key in (source.name, source.stem, str(source)):
        if key in mapping:
            return mapping[key]
    if "default" in mapping:
        return mapping["default"]
    if single is not None:
        return single
    known = ", ".join(sorted(mapping)) or "none"
    raise ReasoningEmbedError(f"no instruction for source {source.name!r} (mapping has: {known}); pass instruction=... "
                              f"or instructions=FILE with an entry for {source.stem!r} (instruction=\"\" for none)")


# ----------------------------------------------------------------------------------------- helpers
def _join(title, text, sep: str) -> str:
    title = (title or "").strip() if isinstance(title, str) else ""
    return f"{title}{sep}{text}" if title else text


def _text(value, path, line, key) -> str:
    if not isinstance(value, str):
        raise DataFormatError(path, line, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(path, line, key, "empty text")
    return value


# ----------------------------------------------------------------------------------------- sentence-transformers
def _table_rows(path: Path, split: str) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) of a table file or a datasets directory."""
    if path.is_dir():
        try:
            import datasets
        except ImportError as e:  # pragma: no cover
            raise ReasoningEmbedError("reading a datasets directory needs the `datasets` package") from e
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise DataFormatError(path, None, None, f"not a datasets directory saved with save_to_disk ({e})")
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataFormatError(path, None, None, f"split {split!r} not found; splits: {sorted(ds)}")
            ds = ds[split]
        for i, rec in enumerate(ds, start=1):
            yield i, rec
        return
    if not path.is_file():
        raise DataFormatError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            start = 2
            for rec in reader:
                yield start, rec
                start = reader.line_num + 1
    elif suffix in (".jsonl", ".json"):
        yield from iter_json_lines(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                n += 1
                yield n, rec
    else:
        raise DataFormatError(path, None, None, f"unknown table type {suffix!r}; expected one of {TABLE_SUFFIXES} "
                                                "or a datasets directory")


def _negative_columns(columns, prefix: str) -> list[str]:
    pat = re.compile(rf"^{re.escape(prefix)}(?:_?(\d+))?$")
    found = [(int(m.group(1) or 0), c) for c in columns if (m := pat.match(c))]
    return [c for _, c in sorted(found)]


def convert_st(path: Path, instruction: str, anchor: str = "anchor", positive: str = "positive",
               negative_prefix: str = "negative", split: str = "train", **_) -> Iterator[dict]:
    neg_cols = None
    for line, rec in _table_rows(path, split):
        if neg_cols is None:
            for col in (anchor, positive):
                if col not in rec:
                    raise DataFormatError(path, line, col, f"column missing; columns are {sorted(rec)}")
            neg_cols = _negative_columns(rec.keys(), negative_prefix)
        query = _text(rec.get(anchor), path, line, anchor)
        pos = _text(rec.get(positive), path, line, positive)
        negs = [rec[c] for c in neg_cols if isinstance(rec.get(c), str) and rec[c].strip()]
        yield {"query": [instruction, query], "pos": [pos], "neg": negs}


# ----------------------------------------------------------------------------------------- BEIR
def convert_beir(path: Path, instruction: str, split: str = "train", title_separator: str = " ",
                 beir_zero_as_negative: bool = True, stats: dict | None = None, **_) -> Iterator[dict]:
    from reasoning_embed.data.beir import read_beir

    beir = read_beir(path, split, title_separator)
    for qid in beir.queries:  # in the queries file's order
        if qid not in beir.qrels:
            continue
        judged = beir.qrels[qid]
        pos = [d for d, score in judged.items() if score > 0]
        neg = [d for d, score in judged.items() if score <= 0] if beir_zero_as_negative else []
        if not pos:
            if stats is not None:
                stats["skipped_no_positive"] = stats.get("skipped_no_positive", 0) + 1
            continue
        yield {"query": [instruction, beir.queries[qid]], "pos": [beir.corpus[d] for d in pos],
               "neg": [beir.corpus[d] for d in neg], "id": qid}


# ----------------------------------------------------------------------------------------- Tevatron
def convert_tevatron(path: Path, instruction: str, title_separator: str = " ", **_) -> Iterator[dict]:
    def passages(obj, key, line, required):
        value = obj.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or (required and not value):
            raise DataFormatError(path, line, key, "missing or empty; expected a list of {title, text}")
        out = []
        for i, p in enumerate(value):
            if isinstance(p, str):
                out.append(_text(p, path, line, f"{key}[{i}]"))
                continue
            if not isinstance(p, dict):
                raise DataFormatError(path, line, f"{key}[{i}]", "expected an object with text")
            out.append(_join(p.get("title"), _text(p.get("text"), path, line, f"{key}[{i}].text"), title_separator))
        return out

    for line, obj in iter_json_lines(path):
        if "query" not in obj:
            raise DataFormatError(path, line, "query", "missing")
        query = _text(obj["query"], path, line, "query")
        row = {"query": [instruction, query], "pos": passages(obj, "positive_passages", line, True),
               "neg": passages(obj, "negative_passages", line, False)}
        if "query_id" in obj:
            row["id"] = str(obj["query_id"])
        yield row


CONVERTERS = {"st": convert_st, "beir": convert_beir, "tevatron": convert_tevatron}


# ----------------------------------------------------------------------------------------- driver
def _sources(fmt: str, inputs) -> list[Path]:
    paths = [Path(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    out = []
    for p in paths:
        if fmt == "beir" and p.is_dir() and not (p / "corpus.jsonl").exists():
            subsets = sorted(d for d in p.iterdir() if (d / "corpus.jsonl").is_file())
            out.extend(subsets or [p])  # a directory of BEIR datasets: one source each
        elif fmt == "beir" or not p.is_dir() or fmt == "st" and (p / "dataset_info.json").is_file() \
                or fmt == "st" and (p / "dataset_dict.json").is_file():
            out.append(p)  # one source: a file, a BEIR dataset directory, or a datasets directory
        else:  # a directory of source files
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in
                           (TABLE_SUFFIXES if fmt == "st" else (".jsonl", ".json")))
            if not files:
                raise DataFormatError(p, None, None, "directory holds no input files")
            out.extend(files)
    return out


def _write_rows(rows: Iterator[dict], output: Path) -> int:
    n = 0
    with atomic_open(output) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        if n == 0:
            raise ReasoningEmbedError(f"conversion to {output} produced no rows")
    return n


def convert(format: str, input, output, instruction: str | None = None, instructions=None, **options) -> dict:
    """Convert every source in ``input`` (a path or list; a directory of files = one source per file).

    One source and ``output`` ending in ``.jsonl``: that file. Otherwise ``output`` is a directory with
    ``<source stem>.jsonl`` per source (a training mixture: one source per file).
    """
    if format not in CONVERTERS:
        raise ReasoningEmbedError(f"format must be one of {FORMATS}, got {format!r}")
    mapping = load_instructions(instructions)
    sources = _sources(format, input)
    output = Path(output)
    single = len(sources) == 1 and output.suffix == ".jsonl"
    report = {"format": format, "sources": {}}
    stems = [s.stem for s in sources]
    for src in sources:
        inst = instruction_for(src, mapping, instruction)
        name = src.stem if stems.count(src.stem) == 1 else src.name.replace(".", "_")
        dest = output if single else output / f"{name}.jsonl"
        stats: dict = {}
        n = _write_rows(CONVERTERS[format](src, inst, stats=stats, **options), dest)
        report["sources"][str(src)] = {"output": str(dest), "rows": n, "instruction": inst, **stats}
    return report
