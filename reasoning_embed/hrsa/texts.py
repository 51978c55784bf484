"""Texts (and optional labels) for an HRSA comparison.

Sources (``load_texts(source, ...)``):

* ``builtin`` — the offline stdlib corpus (``reasoning_embed.data.stdlib_corpus``, built on first
  use): the passages of one split (both kinds, docstrings and code); ``label`` = top-level module,
  a labelled set for the cross-model probe;
* a ``.txt`` file — one text per line (blank lines skipped), no labels;
* a ``.jsonl`` file — a ``text`` field per line (``text_field``), or the training format
  (``query: [instruction, text]``, ``pos: [...]``): ``pairs_use`` picks the query text, the
  positives or both; a ``label`` field (``label_field``) is used when present on every row;
* a ``.csv`` / ``.tsv`` file — a ``text`` column (``text_field``) and an optional label column;
* a directory written by ``datasets`` ``save_to_disk`` (a Dataset or a DatasetDict: ``split``);
* ``hf:NAME`` or ``hf:NAME:CONFIG`` — a ``datasets`` hub dataset from the local cache
  (``HF_DATASETS_OFFLINE=1`` works when it was downloaded before).

Texts are stripped; empty ones are dropped and exact duplicates removed (both counted: duplicate
texts make duplicate rows, which the k-NN metrics must not see). With ``n_texts`` set and more texts
available, a seeded random subset is kept (in source order).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reasoning_embed.data.jsonl import iter_json_lines, text_lines
from reasoning_embed.errors import DataFormatError

PAIRS_USE = ("pos", "query", "both")
__all__ = ["TextSet", "load_texts", "PAIRS_USE"]


@dataclass
class TextSet:
    texts: list[str]
    labels: list | None                 # one label per text, or None
    source: str                         # what was read (path, "builtin:<dir>/<split>", "hf:...")
    info: dict = field(default_factory=dict)   # counts: read, empty, duplicates, subset


def _label_ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v)) and (not isinstance(v, str) or v.strip() != "")


def _training_texts(obj: dict, pairs_use: str, path, line) -> list[str]:
    q = obj.get("query")
    out = []
    if pairs_use in ("query", "both"):
        if isinstance(q, list) and len(q) == 2 and isinstance(q[1], str):
            out.append(q[1])
        elif isinstance(q, str):
            out.append(q)
        else:
            raise DataFormatError(path, line, "query", "expected [instruction, text] or a string")
    if pairs_use in ("pos", "both"):
        pos = obj.get("pos")
        if isinstance(pos, str):
            pos = [pos]
        if not isinstance(pos, list) or not all(isinstance(p, str) for p in pos):
            raise DataFormatError(path, line, "pos", "expected a list of strings (the training format)")
        out.extend(pos)
    return out


def _read_jsonl(path: Path, text_field: str, label_field: str | None, pairs_use: str):
    texts, labels = [], []
    hint = f"expected one JSON object per line with a {text_field!r} field or query/pos"
    for lineno, obj in iter_json_lines(path, hint=hint):
        if text_field in obj:
            if not isinstance(obj[text_field], str):
                raise DataFormatError(path, lineno, text_field,
                                      f"expected a string, got {type(obj[text_field]).__name__}")
            rows = [obj[text_field]]
        elif "query" in obj or "pos" in obj:
            rows = _training_texts(obj, pairs_use, path, lineno)
        else:
            raise DataFormatError(path, lineno, text_field, f"missing; expected a {text_field!r} field "
                                  "(or the training format's query/pos)")
        lab = obj.get(label_field) if label_field else None
        texts.extend(rows)
        labels.extend([lab] * len(rows))
    return texts, labels


def _read_csv(path: Path, text_field: str, label_field: str | None):
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        cols = reader.fieldnames or []
        if text_field not in cols:
            raise DataFormatError(path, 1, text_field, f"no such column (columns: {cols}); expected a header row "
                                  f"with a {text_field!r} column (set text_field=...)")
        texts, labels = [], []
        for row in reader:
            texts.append(row[text_field] or "")
            labels.append(row.get(label_field) if label_field and label_field in cols else None)
    return texts, labels


def _from_dataset(ds, where: str, text_field: str, label_field: str | None, split: str | None):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        pick = split if split in ds else next((s for s in ("test", "validation", "train") if s in ds), names[0])
        if split is not None and split not in ds:
            raise DataFormatError(where, None, "split", f"no split {split!r} (splits: {names})")
        ds, where = ds[pick], f"{where}[{pick}]"
    if text_field not in ds.column_names:
        raise DataFormatError(where, None, text_field, f"no such column (columns: {ds.column_names}); "
                              "set text_field=...")
    texts = [t if isinstance(t, str) else "" for t in ds[text_field]]
    labels = None
    if label_field and label_field in ds.column_names:
        labels = list(ds[label_field])
        feat = ds.features.get(label_field)
        if hasattr(feat, "names"):                      # ClassLabel: readable names
            labels = [feat.names[v] if isinstance(v, int) and 0 <= v < len(feat.names) else v for v in labels]
    return texts, labels, where


def _builtin(corpus_dir: str | Path, split: str | None, pairs_use: str, label_field: str | None):
    from reasoning_embed.data.stdlib_corpus import SPLITS, build_stdlib_corpus

    split = split or "test"
    if split not in SPLITS:
        raise DataFormatError(corpus_dir, None, "split", f"the builtin corpus has splits {SPLITS}, got {split!r}")
    root = build_stdlib_corpus(corpus_dir)
    texts, labels = [], []
    for kind in ("docstring", "code"):
        t, lab = _read_jsonl(root / split / f"{kind}.jsonl", "text", label_field, pairs_use)
        texts += t
        labels += lab
    return texts, labels, f"builtin:{root}/{split}"


def load_texts(source: str = "builtin", *, corpus_dir: str | Path | None = None, split: str | None = None,
               text_field: str = "text", label_field: str | None = "label", pairs_use: str = "pos",
               n_texts: int | None = None, seed: int = 0, dedupe: bool = True) -> TextSet:
    """Read texts (and labels when every kept text has one); see the module docstring for sources."""
    if pairs_use not in PAIRS_USE:
        raise ValueError(f"pairs_use must be one of {PAIRS_USE}, got {pairs_use!r}")
    source = str(source)
    labels: list | None
    if source == "builtin":
        if corpus_dir is None:
            raise ValueError("texts=builtin needs corpus_dir (where the stdlib corpus is built)")
        texts, labels, where = _builtin(corpus_dir, split, pairs_use, label_field)
    elif source.startswith("hf:"):
        import datasets

        parts = source[3:].split(":")
        name, config = parts[0], (parts[1] if len(parts) > 1 else None)
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # noqa: BLE001 - offline misses surface as many exception types
            raise DataFormatError(source, None, None, f"could not load the datasets hub dataset {name!r} "
                                  f"(config={config}, split={split}) from the local cache: {e}") from None
        texts, labels, where = _from_dataset(ds, source, text_field, label_field, split)
    else:
        path = Path(source)
        if path.is_dir():
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001
                raise DataFormatError(path, None, None, "a directory must be a `datasets` save_to_disk directory "
                                      f"(Dataset or DatasetDict); load_from_disk failed: {e}") from None
            texts, labels, where = _from_dataset(ds, str(path), text_field, label_field, split)
        elif path.is_file():
            suffix = path.suffix.lower()
            where = str(path)
            try:
                if suffix in (".jsonl", ".json"):
                    texts, labels = _read_jsonl(path, text_field, label_field, pairs_use)
                elif suffix in (".csv", ".tsv"):
                    texts, labels = _read_csv(path, text_field, label_field)
                elif suffix in (".txt", ".text", ""):
                    texts = [line.rstrip("\r\n") for _, line in text_lines(path)]  # one text per line
                    labels = None
                else:
                    raise DataFormatError(path, None, None, f"unknown file type {suffix!r}; expected .txt (one text "
                                          "per line), .jsonl (text field or query/pos), .csv/.tsv (text column) "
                                          "or a datasets save_to_disk directory")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        else:
            raise DataFormatError(path, None, None, "no such file or directory; texts= takes 'builtin', a .txt/"
                                  ".jsonl/.csv file, a datasets save_to_disk directory, or hf:NAME")

    n_read = len(texts)
    if labels is not None and len(labels) != n_read:
        labels = None
    keep, seen, n_empty, n_dup = [], set(), 0, 0
    for i, t in enumerate(texts):
        t = (t or "").strip()
        if not t:
            n_empty += 1
            continue
        if dedupe and t in seen:
            n_dup += 1
            continue
        seen.add(t)
        texts[i] = t
        keep.append(i)
    if not keep:
        raise DataFormatError(where, None, None, f"no usable texts (read {n_read}, {n_empty} empty)")
    subset = None
    if n_texts is not None and len(keep) > int(n_texts):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(keep, size=int(n_texts), replace=False).tolist())
        subset = int(n_texts)
    out_texts = [texts[i] for i in keep]
    out_labels = None
    if labels is not None:
        lab = [labels[i] for i in keep]
        if all(_label_ok(v) for v in lab):
            out_labels = [v if isinstance(v, (str, int, bool)) else str(v) for v in lab]
    info = {"read": n_read, "empty": n_empty, "duplicates": n_dup, "subset": subset, "kept": len(out_texts),
            "labelled": out_labels is not None, "label_field": label_field if out_labels is not None else None}
    return TextSet(out_texts, out_labels, where, info)
