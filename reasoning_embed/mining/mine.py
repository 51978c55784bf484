"""Hard-negative mining with a reference model and the relative-margin ("95%") rule.

For each row ``{"query": [instruction, text], "pos": [...], "neg": [...]}`` of a training file:

1. **Embed** the query text *without* its instruction (as the paper's miner) and every passage of the
   candidate corpus: by default all positives of the same file (deduplicated), or a separate corpus file.
2. **Search** the corpus exactly (faiss inner product on unit vectors = cosine).
3. **Exclude** the row's own positives, passages whose *normalised* text equals a positive's (NFKC,
   case-folded, whitespace collapsed: ``normalise_text``), passages equal to the query text, and (in
   ``append`` mode) passages equal to one of the row's existing negatives.
4. **Candidates** = the first ``top_k`` passages left (100), or ``ceil(top_fraction * corpus)`` (10%)
   when that is smaller, but never fewer than ``min_candidates``.
5. **Margin rule** (sign-safe, as sentence-transformers' ``mine_hard_negatives``): a candidate ``c`` is a valid
   negative only if ``sim(q, c) <= sim(q, pos) - |sim(q, pos)| * relative_margin`` (``relative_margin`` 0.05:
   the paper's "95%"; for a positive score this is ``0.95 * sim(q, pos)``, and it stays *below* the positive
   when ``sim(q, pos) < 0``, where ``0.95 * sim`` would lie above it). With several positives ``sim(q, pos)``
   is the **smallest** cosine over the row's positives: a negative must be clearly less similar than *every*
   positive (the strictest reading; the largest positive would be the most lenient one).
6. **Pick** ``num_negatives`` (3) valid candidates inside ``rank_range`` (ranks among the candidates,
   0-based, ``[start, end)``): ``sampling=top`` takes the highest-ranked, ``sampling=random`` a uniform
   sample (seeded per row, so results do not depend on batching or resumption), kept in rank order.
   A candidate whose normalised text was already picked is skipped.
7. **Write** the row with the mined negatives appended to its existing ones (``mode=append``) or instead
   of them (``mode=replace``), atomically, plus ``<output>.report.json``.

Encoding streams through memory-mapped tables in ``<output>.work/`` and resumes after an interruption
(``reasoning_embed.mining.store``); the work directory is removed after success unless
``keep_work_dir``.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
import unicodedata
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from reasoning_embed.data.jsonl import iter_json_lines
from reasoning_embed.data.jsonl import data_files, read_jsonl
from reasoning_embed.errors import DataFormatError, ReasoningEmbedError
from reasoning_embed.mining.reference import Reference
from reasoning_embed.retrieval import Searcher
from reasoning_embed.mining.store import content_key, embed_table
from reasoning_embed.utils.io import atomic_open, atomic_write_json

MODES = ("append", "replace")
SAMPLINGS = ("top", "random")
HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 4)
_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The key for duplicate detection: NFKC, case-folded, runs of whitespace as one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass
class MineSettings:
    num_negatives: int = 3
    relative_margin: float = 0.05
    top_k: int = 100
    top_fraction: float | None = 0.1
    min_candidates: int = 10
    sampling: str = "top"
    rank_range: tuple[int, int | None] = (0, None)
    mode: str = "append"
    min_negatives: int = 0            # rows that end with fewer negatives than this are dropped (0: keep all)
    exclude_query_text: bool = True
    seed: int = 0
    batch_size: int = 64
    search_chunk: int = 2048
    index: str = "flat"               # flat | ivf | torch
    ivf_nlist: int | None = None
    ivf_nprobe: int = 32
    keep_work_dir: bool = False
    bad_rows: str = "error"

    def check(self) -> None:
        if self.mode not in MODES:
            raise ReasoningEmbedError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.sampling not in SAMPLINGS:
            raise ReasoningEmbedError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not 0.0 <= self.relative_margin < 1.0:
            raise ReasoningEmbedError(f"relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.num_negatives < 0 or self.top_k < 1 or self.batch_size < 1:
            raise ReasoningEmbedError("num_negatives must be >= 0, top_k and batch_size >= 1")
        lo, hi = self.rank_range
        if lo < 0 or (hi is not None and hi <= lo):
            raise ReasoningEmbedError(f"rank_range must be [start, end) with 0 <= start < end, got {self.rank_range}")

    def candidate_count(self, corpus_size: int) -> int:
        k = self.top_k
        if self.top_fraction:
            k = min(k, max(self.min_candidates, math.ceil(self.top_fraction * corpus_size)))
        return max(1, min(k, corpus_size))


def histogram(values) -> dict:
    """Counts over 40 bins of width 0.05 on [-1, 1] (values outside land in the end bins), plus summary."""
    v = np.asarray(values, dtype=np.float64)
    counts, _ = np.histogram(np.clip(v, -1.0, 1.0), bins=HIST_EDGES)
    out = {"n": int(v.size), "edges": HIST_EDGES.tolist(), "counts": counts.tolist()}
    if v.size:
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        out.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()),
                   quantiles=dict(zip(["p05", "p25", "p50", "p75", "p95"], q.round(6).tolist())))
    return out


class RunningHistogram:
    """``histogram`` without keeping the values (for the ~100 candidates per query): no quantiles."""

    def __init__(self):
        self.counts = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
        self.n, self.total, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, values) -> None:
        v = np.asarray(values, dtype=np.float64)
        if not v.size:
            return
        self.counts += np.histogram(np.clip(v, -1.0, 1.0), bins=HIST_EDGES)[0]
        self.n += v.size
        self.total += float(v.sum())
        self.min, self.max = min(self.min, float(v.min())), max(self.max, float(v.max()))

    def to_dict(self) -> dict:
        out = {"n": self.n, "edges": HIST_EDGES.tolist(), "counts": self.counts.tolist()}
        if self.n:
            out.update(mean=self.total / self.n, min=self.min, max=self.max)
        return out


def read_corpus(path: str | Path) -> list[str]:
    """Passages of a corpus file (JSONL): a string per line, or objects with ``text`` (and optional
    ``title``, joined with a space) or training rows (their ``pos``)."""
    path = Path(path)
    texts = []
    for lineno, obj in iter_json_lines(path, objects_only=False):
        if isinstance(obj, str):
            items = [obj]
        elif isinstance(obj, dict) and "text" in obj:
            text, title = obj["text"], obj.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise DataFormatError(path, lineno, "text", "expected a string")
            items = [f"{title} {text}".strip() if title else text]
        elif isinstance(obj, dict) and "pos" in obj:
            items = obj["pos"] if isinstance(obj["pos"], list) else [obj["pos"]]
        else:
            raise DataFormatError(path, lineno, "text", "missing; expected a string, {\"text\": ...} or a row with \"pos\"")
        for t in items:
            if not isinstance(t, str) or not t.strip():
                raise DataFormatError(path, lineno, "text", "empty or not a string")
            texts.append(t)
    if not texts:
        raise DataFormatError(path, None, None, "empty corpus: no passages")
    return texts


def _index_of(texts: list[str]) -> dict[str, int]:
    where: dict[str, int] = {}
    for t in texts:
        where.setdefault(t, len(where))
    return where


def margin_threshold(pos_sim: float, relative_margin: float) -> float:
    """The largest candidate similarity the relative-margin rule accepts: ``pos - |pos| * margin``.

    Sign-safe: the threshold is below ``pos_sim`` whatever its sign (``(1 - margin) * pos`` is above a
    negative ``pos``, accepting candidates more similar than the positive).
    """
    return pos_sim - abs(pos_sim) * relative_margin


def reference_positive_sim(p_emb, pos_ids: list[int], q) -> float:
    """The positive similarity a row's candidates are held against: the smallest over its positives."""
    return float(np.min(np.asarray(p_emb[pos_ids]) @ q))


def _passage_table(rows, corpus_path) -> tuple[list[str], int, dict[str, int], dict[str, list[int]]]:
    """Candidates first (the corpus), then positives that are not in it (scored, never returned)."""
    if corpus_path is None:
        corpus = list(_index_of([p for r in rows for p in r.pos]))
    else:
        corpus = list(_index_of(read_corpus(corpus_path)))
    where = _index_of(corpus)
    n_cand = len(corpus)
    passages = corpus + [p for p in _index_of([p for r in rows for p in r.pos]) if p not in where]
    by_norm: dict[str, list[int]] = {}
    for i, t in enumerate(passages[:n_cand]):
        by_norm.setdefault(normalise_text(t), []).append(i)
    return passages, n_cand, _index_of(passages), by_norm


def _exclusions(r, where, n_cand, by_norm, settings: MineSettings) -> dict[int, str]:
    """Corpus rows a query may not receive, with the reason (counted in the report)."""
    ex: dict[int, str] = {}
    for p in r.pos:
        if p in where and where[p] < n_cand:
            ex[where[p]] = "excluded_positive"
    for pn in {normalise_text(p) for p in r.pos}:
        for i in by_norm.get(pn, ()):
            ex.setdefault(i, "excluded_positive_duplicate")
    if settings.exclude_query_text:
        for i in by_norm.get(normalise_text(r.query), ()):
            ex.setdefault(i, "excluded_query_text")
    if settings.mode == "append":
        for nt in {normalise_text(n) for n in r.neg}:
            for i in by_norm.get(nt, ()):
                ex.setdefault(i, "excluded_existing_negative")
    return ex


def _pick_negatives(row_i, scores, idx, excluded, threshold, passages, settings, k, counts):
    """Candidates of one query (first k not excluded), the margin rule inside rank_range, then the pick.
    Returns (picked [(rank, i, s)], rejected similarities)."""
    cands = []
    for s, i in zip(scores, idx):
        if i < 0:
            continue
        why = excluded.get(i)
        if why is not None:
            counts[why] += 1
            continue
        cands.append((i, s))
        if len(cands) == k:
            break
    window = cands[settings.rank_range[0]:settings.rank_range[1]]
    counts["candidates"] += len(window)
    valid = [(rank, i, s) for rank, (i, s) in enumerate(window) if s <= threshold]
    rejected = [s for i, s in window if s > threshold]
    counts["margin_rejected"] += len(rejected)
    if settings.sampling == "random":  # a seeded random order per row; picks back in rank order
        valid = random.Random(f"{settings.seed}-{row_i}").sample(valid, len(valid))
    picked, seen = [], set()
    for rank, i, s in valid:
        if len(picked) == settings.num_negatives:
            break
        nk = normalise_text(passages[i])
        if nk in seen:
            counts["skipped_picked_duplicate"] += 1
            continue
        seen.add(nk)
        picked.append((rank, i, s))
    picked.sort()
    return picked, rejected


def _new_counts() -> dict:
    return dict(candidates=0, margin_rejected=0, excluded_positive=0, excluded_positive_duplicate=0,
                excluded_query_text=0, excluded_existing_negative=0, skipped_picked_duplicate=0,
                mined_negatives=0, rows_short=0, rows_without_mined=0, rows_dropped_min_negatives=0)


def _mine_rows(rows, out, q_emb, p_emb, searcher, table, settings: MineSettings, k: int) -> dict:
    """Search, apply the margin rule and write every row; returns counts, similarities and the search time."""
    passages, n_cand, where, by_norm = table
    counts = _new_counts()
    pos_sims, neg_sims = array("f"), array("f")  # 4 bytes a value: fine for millions of rows
    rejected_hist = RunningHistogram()
    search_s, rows_out = 0.0, 0
    for start in range(0, len(rows), settings.search_chunk):
        chunk = rows[start:start + settings.search_chunk]
        excluded = [_exclusions(r, where, n_cand, by_norm, settings) for r in chunk]
        depth = min(n_cand, k + max((len(e) for e in excluded), default=0))
        q = np.asarray(q_emb[start:start + len(chunk)])
        t0 = time.perf_counter()
        scores, idx = searcher.search(q, depth)
        search_s += time.perf_counter() - t0
        chunk_rejected: list[float] = []
        for j, r in enumerate(chunk):
            pos_sim = reference_positive_sim(p_emb, [where[p] for p in r.pos], q[j])
            pos_sims.append(pos_sim)
            picked, rejected = _pick_negatives(start + j, scores[j].tolist(), idx[j].tolist(), excluded[j],
                                               margin_threshold(pos_sim, settings.relative_margin), passages,
                                               settings, k, counts)
            chunk_rejected.extend(rejected)
            mined = [passages[i] for _, i, _ in picked]
            neg_sims.extend(s for _, _, s in picked)
            counts["mined_negatives"] += len(mined)
            counts["rows_short"] += len(mined) < settings.num_negatives
            counts["rows_without_mined"] += not mined
            negs = (list(r.neg) + mined) if settings.mode == "append" else mined
            if len(negs) < settings.min_negatives:
                counts["rows_dropped_min_negatives"] += 1
                continue
            record = {"query": [r.instruction, r.query], "pos": list(r.pos), "neg": negs, **r.extra}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            rows_out += 1
        rejected_hist.add(chunk_rejected)
    return {"counts": counts, "pos_sims": pos_sims, "neg_sims": neg_sims, "rejected_hist": rejected_hist,
            "search_s": search_s, "rows_out": rows_out}


def mine_file(input_path: str | Path, output_path: str | Path, reference: Reference | Callable[[], Reference],
              settings: MineSettings, corpus_path: str | Path | None = None, progress: bool = True,
              on_batch: Callable[[str, int, int], None] | None = None) -> dict:
    """Mine one training file into ``output_path``; returns (and writes) the report.

    ``reference`` may be a zero-argument loader: it is called only after the input (and corpus) were
    read, so malformed data fails in seconds, before a large model loads.
    """
    settings.check()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ReasoningEmbedError(f"output {output_path} is the input file; write to another path")
    t_start = time.perf_counter()
    rows, read_report = read_jsonl(input_path, settings.bad_rows)
    table = _passage_table(rows, corpus_path)
    passages, n_cand = table[0], table[1]
    if not isinstance(reference, Reference):
        reference = reference()

    work_dir = output_path.parent / f"{output_path.name}.work"
    key = content_key(reference.fingerprint)
    t0 = time.perf_counter()
    queries = [r.query for r in rows]
    q_emb, q_stats = embed_table(work_dir, "queries", queries,
                                 lambda idx: reference.encode([queries[i] for i in idx], None, is_query=True),
                                 reference.dim, settings.batch_size, key, progress, on_batch)
    p_emb, p_stats = embed_table(work_dir, "passages", passages,
                                 lambda idx: reference.encode([passages[i] for i in idx], None, is_query=False),
                                 reference.dim, settings.batch_size, key, progress, on_batch)
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    searcher = Searcher(p_emb[:n_cand], settings.index, settings.ivf_nlist, settings.ivf_nprobe, seed=settings.seed)
    index_s = time.perf_counter() - t0
    k = settings.candidate_count(n_cand)
    with atomic_open(output_path) as out:
        res = _mine_rows(rows, out, q_emb, p_emb, searcher, table, settings, k)
    del searcher, q_emb, p_emb
    if not settings.keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    counts = res["counts"]
    report = {
        "input": str(input_path),
        "output": str(output_path),
        "corpus": str(corpus_path) if corpus_path else "positives of the input file",
        "reference": {"name": reference.name, "kind": reference.kind, "fingerprint": reference.fingerprint,
                      "dim": reference.dim},
        "settings": asdict(settings),
        "sim_pos_definition": "min cosine over the row's positives; query embedded without its instruction",
        "rule": f"keep candidate c iff cos(q,c) <= s - |s| * {settings.relative_margin:g}, s = min_p cos(q,p)",
        "rows_in": len(rows) + read_report.skipped,
        "rows_read": len(rows),
        "rows_skipped_malformed": read_report.skipped,
        "rows_out": res["rows_out"],
        "corpus_size": n_cand,
        "candidates_per_query": k,
        **counts,
        "rows_with_fewer_than_wanted": counts["rows_short"],
        "histograms": {"pos_sim": histogram(res["pos_sims"]), "mined_neg_sim": histogram(res["neg_sims"]),
                       "margin_rejected_sim": res["rejected_hist"].to_dict()},
        "counts_note": "excluded_* count search hits skipped while collecting the candidates of each query; "
                       "candidates and margin_rejected are over the candidates inside rank_range",
        "encoding": {"queries": q_stats, "passages": p_stats},
        "seconds": {"encode": encode_s, "index": index_s, "search": res["search_s"],
                    "total": time.perf_counter() - t_start},
    }
    atomic_write_json(Path(f"{output_path}.report.json"), report)
    return report


def mine(input: str | Path, output: str | Path, reference: Reference | Callable[[], Reference],
         settings: MineSettings, corpus: str | Path | None = None, progress: bool = True,
         on_batch=None) -> list[dict]:
    """Mine a file, or every ``*.jsonl`` of a directory (each against its own positives, or ``corpus``)
    into the directory ``output``. ``reference``: a model or a loader called once, when first needed."""
    input, output = Path(input), Path(output)
    if not isinstance(reference, Reference):
        loader, cache = reference, []

        def reference():
            if not cache:
                cache.append(loader())
            return cache[0]
    if input.is_dir():
        files = data_files(input)
        if output.suffix == ".jsonl":
            raise ReasoningEmbedError(f"input {input} is a directory; output must be a directory, got {output}")
        return [mine_file(f, output / f.name, reference, settings, corpus, progress, on_batch) for f in files]
    if output.is_dir() or output.suffix != ".jsonl":
        output = output / input.name
    output.parent.mkdir(parents=True, exist_ok=True)
    return [mine_file(input, output, reference, settings, corpus, progress, on_batch)]
