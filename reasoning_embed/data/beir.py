"""A BEIR-format directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), read once for both
evaluation (a local retrieval task) and conversion to the training format. Bad input names file, line and key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reasoning_embed.data.jsonl import iter_json_lines, text_lines
from reasoning_embed.errors import DataFormatError


@dataclass
class BeirData:
    corpus: dict[str, str]                 # doc id -> "title<sep>text" (the bare text without a title)
    queries: dict[str, str]                # query id -> text, in file order
    qrels: dict[str, dict[str, float]]     # query id -> {doc id: score}, in file order
    corpus_path: Path
    queries_path: Path
    qrels_path: Path


def _text(obj, key, path, line, allow_empty: bool) -> str:
    value = obj.get(key, "" if allow_empty else None)
    if value is None and allow_empty:
        value = ""
    if not isinstance(value, str):
        raise DataFormatError(path, line, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(path, line, key, "empty text")
    return value


def _records(path: Path, allow_empty: bool, title_separator: str | None):
    for line, obj in iter_json_lines(path, hint="a BEIR record {\"_id\": ..., \"text\": ...}"):
        if "_id" not in obj:
            raise DataFormatError(path, line, "_id", "missing")
        text = _text(obj, "text", path, line, allow_empty)
        title = obj.get("title") if title_separator is not None else None
        title = title.strip() if isinstance(title, str) else ""
        yield str(obj["_id"]), (f"{title}{title_separator}{text}" if title else text)


def read_beir(path: str | Path, split: str = "test", title_separator: str = " ",
              allow_empty_text: bool = False) -> BeirData:
    """Read a BEIR directory; every qrels id must exist in the corpus and queries. A first qrels line whose
    score is not a number is a header."""
    path = Path(path)
    corpus_path, queries_path = path / "corpus.jsonl", path / "queries.jsonl"
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not path.is_dir():
        raise DataFormatError(path, None, None, "expected a BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    for p in (corpus_path, queries_path, qrels_path):
        if not p.is_file():
            raise DataFormatError(p, None, None, f"not found (a BEIR directory needs it{' for split ' + repr(split) if p == qrels_path else ''})")
    corpus = dict(_records(corpus_path, allow_empty_text, title_separator))
    if not corpus:
        raise DataFormatError(corpus_path, None, None, "empty corpus: no documents")
    queries = dict(_records(queries_path, allow_empty_text, None))
    qrels: dict[str, dict[str, float]] = {}
    for lineno, line in text_lines(qrels_path):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 3:
            raise DataFormatError(qrels_path, lineno, None, "expected query-id<TAB>corpus-id<TAB>score")
        qid, did = parts[0], parts[1]
        try:
            score = float(parts[2])
        except ValueError:
            if lineno == 1:
                continue  # the header
            raise DataFormatError(qrels_path, lineno, "score", f"not a number: {parts[2]!r}") from None
        if qid not in queries:
            raise DataFormatError(qrels_path, lineno, "query-id", f"{qid!r} is not in {queries_path.name}")
        if did not in corpus:
            raise DataFormatError(qrels_path, lineno, "corpus-id", f"{did!r} is not in {corpus_path.name}")
        qrels.setdefault(qid, {})[did] = score
    return BeirData(corpus, queries, qrels, corpus_path, queries_path, qrels_path)
