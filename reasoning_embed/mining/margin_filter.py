"""The margin filter: keep training rows by how clearly the positive beats the negatives.

    margin = cos(q, pos) - max over negatives cos(q, neg)

with ``cos(q, pos)`` the maximum over the row's positives (as in mining) and the query embedded without
its instruction unless ``use_instruction``.

Direction, stated plainly: rows with a LARGER margin are EASIER (the positive clearly beats every
negative). Rows with a small or negative margin are HARD, or likely FALSE NEGATIVES (a "negative" that
the reference finds as relevant as the positive). Hence

- ``min_margin`` keeps rows with ``margin >= min_margin``: it DROPS hard / likely-false-negative rows;
- ``max_margin`` keeps rows with ``margin <= max_margin``: it DROPS easy rows;
- either may be ``None`` (no bound).

(The paper's script keeps the opposite side of what its documentation says; this one does what it says,
and ``tests/test_filter.py`` proves it.)

``max_rows`` caps the rows kept after the thresholds. ``cap=random`` (default) keeps a seeded uniform
subset, so the margin distribution the thresholds left is preserved; ``cap=highest_margin`` keeps the
easiest rows, ``cap=lowest_margin`` the hardest. Kept rows stay in input order. Rows without negatives
have no margin: ``no_negative=drop`` (default; training drops them anyway) or ``keep`` (kept outside
the thresholds, never preferred by a margin cap).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from reasoning_embed.data.jsonl import read_jsonl
from reasoning_embed.errors import ReasoningEmbedError
from reasoning_embed.mining.mine import histogram
from reasoning_embed.mining.reference import Reference
from reasoning_embed.mining.store import content_key, embed_table
from reasoning_embed.utils.io import atomic_write_json, atomic_write_text

CAPS = ("random", "highest_margin", "lowest_margin")
NO_NEGATIVE = ("drop", "keep")


def row_margins(rows, reference: Reference, work_dir: Path, use_instruction: bool = False, batch_size: int = 64,
                progress: bool = True, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
    """(max cos(q,pos), max cos(q,neg)) per row; NaN for a row without negatives."""
    queries = [r.query for r in rows]
    instructions = [r.instruction for r in rows] if use_instruction else None
    passages = list(dict.fromkeys(p for r in rows for p in (*r.pos, *r.neg)))
    where = {p: i for i, p in enumerate(passages)}
    key = content_key(reference.fingerprint)
    q_emb, _ = embed_table(work_dir, "queries", queries,
                           lambda idx: reference.encode([queries[i] for i in idx],
                                                        [instructions[i] for i in idx] if instructions else None,
                                                        is_query=True),
                           reference.dim, batch_size, content_key(key, instructions or []), progress, on_batch)
    p_emb, _ = embed_table(work_dir, "passages", passages,
                           lambda idx: reference.encode([passages[i] for i in idx], None, is_query=False),
                           reference.dim, batch_size, key, progress, on_batch)
    pos = np.empty(len(rows))
    neg = np.full(len(rows), np.nan)
    for j, r in enumerate(rows):
        q = np.asarray(q_emb[j])
        pos[j] = float(np.max(np.asarray(p_emb[[where[p] for p in r.pos]]) @ q))
        if r.neg:
            neg[j] = float(np.max(np.asarray(p_emb[[where[n] for n in r.neg]]) @ q))
    return pos, neg


def filter_file(input_path: str | Path, output_path: str | Path, reference: Reference | Callable[[], Reference],
                min_margin: float | None = None, max_margin: float | None = None, max_rows: int | None = None,
                cap: str = "random", no_negative: str = "drop", use_instruction: bool = False, seed: int = 0,
                batch_size: int = 64, record_margin: bool = False, bad_rows: str = "error",
                keep_work_dir: bool = False, progress: bool = True) -> dict:
    """Filter one training file by margin (see the module docstring); writes output + report."""
    if cap not in CAPS:
        raise ReasoningEmbedError(f"cap must be one of {CAPS}, got {cap!r}")
    if no_negative not in NO_NEGATIVE:
        raise ReasoningEmbedError(f"no_negative must be one of {NO_NEGATIVE}, got {no_negative!r}")
    if min_margin is not None and max_margin is not None and min_margin > max_margin:
        raise ReasoningEmbedError(f"min_margin ({min_margin}) > max_margin ({max_margin}) would keep nothing")
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ReasoningEmbedError(f"output {output_path} is the input file; write to another path")
    t0 = time.perf_counter()
    rows, read_report = read_jsonl(input_path, bad_rows)
    if not isinstance(reference, Reference):  # a loader: called once the input is known to be good
        reference = reference()
    work_dir = output_path.parent / f"{output_path.name}.work"
    pos, neg = row_margins(rows, reference, work_dir, use_instruction, batch_size, progress)
    margin = pos - neg
    has_neg = ~np.isnan(neg)
    below = has_neg & (margin < min_margin) if min_margin is not None else np.zeros(len(rows), bool)
    above = has_neg & (margin > max_margin) if max_margin is not None else np.zeros(len(rows), bool)
    keep = ~below & ~above & (has_neg | (no_negative == "keep"))
    kept = np.flatnonzero(keep)
    dropped_cap = 0
    if max_rows is not None and len(kept) > max_rows:
        if cap == "random":
            chosen = random.Random(seed).sample(kept.tolist(), max_rows)
        else:
            sign = -1.0 if cap == "highest_margin" else 1.0  # rows without a margin sort last
            key = np.where(has_neg[kept], sign * margin[kept], np.inf)
            chosen = kept[np.argsort(key, kind="stable")[:max_rows]].tolist()
        dropped_cap = len(kept) - max_rows
        kept = np.sort(np.asarray(chosen, dtype=np.int64))
    lines = []
    for j in kept.tolist():
        r = rows[j]
        record = {"query": [r.instruction, r.query], "pos": list(r.pos), "neg": list(r.neg), **r.extra}
        if record_margin:
            record["margin"] = None if np.isnan(margin[j]) else round(float(margin[j]), 6)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(output_path, "".join(lines))  # permissions follow the umask (utils.io)
    if not keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    report = {
        "input": str(input_path), "output": str(output_path),
        "reference": {"name": reference.name, "kind": reference.kind, "fingerprint": reference.fingerprint},
        "definition": "margin = max_p cos(q,p) - max_n cos(q,n); larger margin = easier row",
        "min_margin": min_margin, "max_margin": max_margin, "max_rows": max_rows, "cap": cap,
        "no_negative": no_negative, "use_instruction": use_instruction, "seed": seed,
        "rows_in": len(rows) + read_report.skipped, "rows_skipped_malformed": read_report.skipped,
        "rows_out": int(len(kept)),
        "dropped_below_min_margin": int(below.sum()), "dropped_above_max_margin": int(above.sum()),
        "dropped_no_negative": int((~has_neg).sum()) if no_negative == "drop" else 0,
        "dropped_by_cap": int(dropped_cap),
        "histograms": {"margin_all": histogram(margin[has_neg]), "margin_kept": histogram(margin[kept][has_neg[kept]]),
                       "pos_sim": histogram(pos), "max_neg_sim": histogram(neg[has_neg])},
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(Path(f"{output_path}.report.json"), report)
    return report
