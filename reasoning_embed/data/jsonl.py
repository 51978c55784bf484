"""The training format: one JSON object per line, ``{"query": [instruction, text], "pos": [...], "neg": [...]}``.

Accepted row shapes (anything else is an error): ``query`` a list of exactly two strings, instruction and
non-empty text (``["", text]`` for no instruction; a bare string is refused rather than guessed); ``pos`` a
non-empty list of non-empty strings, or one string; ``neg`` the same, optional, may be empty; other keys are
kept as ``extra``. The file is UTF-8; blank lines are ignored.

Every malformed row is an error naming file, line and key, unless ``bad_rows="skip"``; skipped rows are
counted (and the count is reported by the caller), never silently lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from reasoning_embed.errors import DataFormatError

BAD_ROW_POLICIES = ("error", "skip")
QUERY_SHAPE = '[instruction, text], two strings (["", text] for a query without instruction)'


@dataclass
class Row:
    instruction: str
    query: str
    pos: list[str]
    neg: list[str]
    extra: dict = field(default_factory=dict)


@dataclass
class ReadReport:
    path: str
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # first few messages of skipped rows


def _text_list(obj, key, path, line, allow_empty):
    value = obj.get(key, [] if allow_empty else None)
    if value is None:
        raise DataFormatError(path, line, key, "missing; expected a list of non-empty strings")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DataFormatError(path, line, key, f"expected a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataFormatError(path, line, key, "empty list; expected at least one passage")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise DataFormatError(path, line, f"{key}[{i}]", f"expected a string, got {type(t).__name__}")
        if not t.strip():
            raise DataFormatError(path, line, f"{key}[{i}]", "empty text")
    return value


def parse_row(obj, path, line) -> Row:
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    q = obj.get("query")
    if q is None:
        raise DataFormatError(path, line, "query", f"missing; expected {QUERY_SHAPE}")
    if isinstance(q, str):  # not guessed as "no instruction": the recipe's queries carry one
        raise DataFormatError(path, line, "query", f"expected {QUERY_SHAPE}, got a bare string {q!r:.60}")
    if not (isinstance(q, list) and len(q) == 2 and all(isinstance(x, str) for x in q)):
        raise DataFormatError(path, line, "query", f"expected {QUERY_SHAPE}, got {q!r:.80}")
    if not q[1].strip():
        raise DataFormatError(path, line, "query", "empty query text")
    pos = _text_list(obj, "pos", path, line, allow_empty=False)
    neg = _text_list(obj, "neg", path, line, allow_empty=True)
    extra = {k: v for k, v in obj.items() if k not in ("query", "pos", "neg")}
    return Row(q[0], q[1], pos, neg, extra)


def iter_json_lines(path: str | Path, objects_only: bool = True, hint: str = ""):
    """Yield (line number, parsed value) for every non-blank line of a JSONL file. A missing file, a line
    that is not JSON (or, with ``objects_only``, not a JSON object) raises DataFormatError naming the line;
    ``hint`` is appended to the message (what the caller expected)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, None, "file not found")
    suffix = f"; {hint}" if hint else ""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, None, f"not valid JSON ({e.msg} at column {e.colno}){suffix}") from None
        if objects_only and not isinstance(obj, dict):
            raise DataFormatError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}{suffix}")
        yield lineno, obj


def text_lines(path: str | Path):
    """Yield (line number, text) of a UTF-8 file; bytes that are not UTF-8 raise DataFormatError naming the
    line and the byte offset in the file (the file may be Latin-1 / cp1252: re-encode it as UTF-8)."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno, None, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset "
                                      f"{offset + e.start} of the file; re-encode the file as UTF-8") from None
            offset += len(raw)


def read_jsonl(path: str | Path, bad_rows: str = "error") -> tuple[list[Row], ReadReport]:
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"bad_rows must be one of {BAD_ROW_POLICIES}, got {bad_rows!r}")
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, None, "file not found")
    rows, report = [], ReadReport(str(path))
    for lineno, line in text_lines(path):  # an encoding error stops the read: the rest is not trustworthy
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append(parse_row(obj, path, lineno))
        except DataFormatError as e:
            if bad_rows == "error":
                raise
            report.skipped += 1
            if len(report.errors) < 20:
                report.errors.append(str(e))
    report.rows = len(rows)
    if not rows:
        raise DataFormatError(path, None, None, "no usable rows (file empty or every row skipped)")
    return rows, report


def data_files(path: str | Path) -> list[Path]:
    """A file, or every ``*.jsonl`` in a directory (sorted): a directory is a mixture, one source per file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataFormatError(path, None, None, "directory holds no *.jsonl files")
        return files
    if path.is_file():
        return [path]
    raise DataFormatError(path, None, None, "no such file or directory")
