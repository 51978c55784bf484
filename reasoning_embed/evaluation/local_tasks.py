"""Offline retrieval tasks: mteb ``AbsTaskRetrieval`` subclasses fed from local files, never from the hub.

Kinds (``benchmark.local_tasks`` entries, see ``conf/benchmark/local.yaml``):

- ``stdlib``: the held-out split of the offline default corpus (``{corpus_dir}/{split}/{docstring,code}.jsonl``,
  built with ``build_stdlib_corpus`` if missing): one task per file, queries against the union of the file's
  positives — the same ``RetrievalSet`` construction as training-time validation
  (:func:`reasoning_embed.retrieval.retrieval_set_from_rows`).
- ``bright_standin``: a BRIGHT-shaped stand-in with several domains, one task and one instruction per
  domain. The split's top-level stdlib packages are grouped into four domains (text / data / system /
  tooling; an unknown package goes to a domain chosen by a hash of its name). Per domain: each distinct
  summary is a query; its documentation and its source code are both relevant (BRIGHT has several gold
  documents per query); the corpus is every documentation and code passage of the domain.
- ``jsonl``: a user's file (or directory of files) in the training format
  ``{"query": [instruction, text], "pos": [...], "neg": [...]}``: queries against the union of positives
  (and negatives with ``include_negatives``).
- ``beir``: a BEIR-format directory: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
  (``_id``, ``text``), ``qrels/{split}.tsv`` (``query-id  corpus-id  score``, header line).
- ``auto``: ``jsonl`` or ``beir`` from what ``path`` holds.

A task's instruction is its own (``instruction:`` in the entry, else the file's most common one, else the
domain's) unless the instruction table has an entry for its name.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from reasoning_embed.data.jsonl import read_jsonl
from reasoning_embed.errors import DataFormatError
from reasoning_embed.evaluation.errors import EvaluationConfigError

log = logging.getLogger("reasoning_embed.evaluation")


@dataclass
class LocalTaskData:
    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    instruction: str | None = None
    description: str = "A local retrieval task."
    source: str = ""

    def __post_init__(self):
        qrels = {q: {d: int(g) for d, g in rel.items() if d in self.corpus and int(g) > 0}
                 for q, rel in self.qrels.items() if q in self.queries}
        self.qrels = {q: rel for q, rel in qrels.items() if rel}
        self.queries = {q: t for q, t in self.queries.items() if q in self.qrels}
        if not self.queries or not self.corpus:
            raise EvaluationConfigError(f"local task {self.name} ({self.source}): no query with a relevant "
                                        f"document in the corpus")


# ---------------------------------------------------------------------------------------------------------
# mteb task class
# ---------------------------------------------------------------------------------------------------------
def _base_class():
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class LocalRetrievalTask(AbsTaskRetrieval):
        """A retrieval task whose data is a LocalTaskData held by the (generated) subclass."""

        local_data: LocalTaskData
        is_local = True

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            if self.data_loaded:
                return
            from datasets import Dataset
            from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

            d = self.local_data
            qids = list(d.queries)
            dids = list(d.corpus)
            split = RetrievalSplitData(
                queries=Dataset.from_dict({"id": qids, "text": [d.queries[q] for q in qids]}),
                corpus=Dataset.from_dict({"id": dids, "text": [d.corpus[i] for i in dids]}),
                relevant_docs={q: dict(d.qrels[q]) for q in qids},
                top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrievalTask


_BASE = None


def make_mteb_task(data: LocalTaskData):
    """An mteb task object for ``data`` (a fresh subclass, so its metadata survives ``unload_data``)."""
    global _BASE
    from mteb.abstasks.task_metadata import TaskMetadata

    if _BASE is None:
        _BASE = _base_class()
    metadata = TaskMetadata(
        name=data.name, description=data.description, reference=None,
        dataset={"path": f"local/{data.name}", "revision": "local"},
        type="Retrieval", category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score="ndcg_at_10", date=None, domains=[], task_subtypes=[], license="not specified",
        annotations_creators="derived", dialect=[], sample_creation="found", bibtex_citation="",
        prompt={"query": data.instruction} if data.instruction else None,
    )
    cls = type(f"Local_{data.name}", (_BASE,), {"metadata": metadata, "local_data": data})
    return cls()


def is_local_task(task) -> bool:
    return bool(getattr(task, "is_local", False))


# ---------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------
def _from_retrieval_set(rs, name: str, instruction: str | None, description: str, source: str) -> LocalTaskData:
    if instruction is None and rs.instructions:
        counts = Counter(i for i in rs.instructions if i)
        if counts:
            instruction = counts.most_common(1)[0][0]
            if len(counts) > 1:
                log.warning("%s: rows carry %d different instructions; the task uses the most common one "
                            "(%r); set `instruction:` on the local task to choose", source, len(counts), instruction)
    queries = {f"q{i}": q for i, q in enumerate(rs.queries)}
    corpus = {f"d{j}": t for j, t in enumerate(rs.corpus)}
    qrels = {f"q{i}": {f"d{j}": g for j, g in rel.items()} for i, rel in enumerate(rs.qrels)}
    return LocalTaskData(name, queries, corpus, qrels, instruction, description, source)


def _camel(stem: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in stem.replace("-", "_").split("_") if p)


def jsonl_tasks(path, name: str | None = None, instruction: str | None = None, max_queries: int | None = None,
                include_negatives: bool = False, seed: int = 0) -> list[LocalTaskData]:
    """One task per training-format JSONL file (a directory gives one task per ``*.jsonl``)."""
    from reasoning_embed.data.jsonl import data_files
    from reasoning_embed.retrieval import retrieval_set_from_rows

    files = data_files(path)
    out = []
    for f in files:
        rows, _ = read_jsonl(f)
        rs = retrieval_set_from_rows(f.stem, rows, max_queries, seed)
        if include_negatives:
            where = {t: j for j, t in enumerate(rs.corpus)}
            for r in rows:
                for n in r.neg:
                    if n not in where:
                        where[n] = len(rs.corpus)
                        rs.corpus.append(n)
        task_name = name if (name and len(files) == 1) else (f"{name}{_camel(f.stem)}" if name else
                                                             f"Local{_camel(f.stem)}Retrieval")
        out.append(_from_retrieval_set(rs, task_name, instruction, f"Local JSONL retrieval task from {f}.", str(f)))
    return out


def beir_task(path, name: str | None = None, split: str = "test", instruction: str | None = None,
              max_queries: int | None = None, seed: int = 0) -> LocalTaskData:
    """A BEIR-format directory as one task (empty documents allowed: the encoder reads them as one token)."""
    import random

    from reasoning_embed.data.beir import read_beir

    beir = read_beir(path, split, " ", allow_empty_text=True)
    path = Path(path)
    corpus = {did: text.strip() for did, text in beir.corpus.items()}
    queries = beir.queries
    qrels = defaultdict(dict, {q: {d: int(s) for d, s in r.items()} for q, r in beir.qrels.items()})
    if max_queries and len(qrels) > max_queries:
        keep = set(random.Random(seed).sample(sorted(qrels), max_queries))
        qrels = defaultdict(dict, {q: r for q, r in qrels.items() if q in keep})
    return LocalTaskData(name or f"Local{_camel(path.name)}Retrieval", queries, corpus, dict(qrels), instruction,
                         f"Local BEIR-format retrieval task from {path}.", str(path))


def _ensure_stdlib(corpus_dir, split: str) -> Path:
    corpus_dir = Path(corpus_dir)
    if not (corpus_dir / split / "docstring.jsonl").exists() or not (corpus_dir / split / "code.jsonl").exists():
        from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus

        log.info("building the offline stdlib corpus at %s", corpus_dir)
        build_stdlib_corpus(corpus_dir)
    return corpus_dir


def stdlib_tasks(corpus_dir, split: str = "test", max_queries: int | None = None, seed: int = 0,
                 kinds=("docstring", "code")) -> list[LocalTaskData]:
    """The held-out split of the offline corpus: StdlibDocstringRetrieval, StdlibCodeRetrieval."""
    corpus_dir = _ensure_stdlib(corpus_dir, split)
    out = []
    for kind in kinds:
        (task,) = jsonl_tasks(corpus_dir / split / f"{kind}.jsonl", name=f"Stdlib{kind.capitalize()}Retrieval",
                              max_queries=max_queries, seed=seed)
        task.description = f"Held-out ({split}) {kind} retrieval of the offline stdlib corpus."
        out.append(task)
    return out


# The BRIGHT stand-in's domains: (instruction, top-level stdlib packages). Instructions are looked up in the
# instruction table first (conf/instructions/e5.yaml has the same text), these are the fallback.
STANDIN_DOMAINS: dict[str, tuple[str, set[str]]] = {
    "Text": ("Given a summary of a Python routine for e-mail, text or locale handling, retrieve the passages "
             "that document or implement it.",
             {"email", "mailbox", "smtplib", "imaplib", "poplib", "string", "re", "textwrap", "html", "xml", "json",
              "csv", "codecs", "unicodedata", "difflib", "gettext", "locale", "encodings", "quopri", "base64",
              "binascii", "mimetypes", "pprint", "reprlib", "configparser", "tomllib", "shlex", "fnmatch", "glob"}),
    "Data": ("Given a summary of a Python routine for data types, containers or dates, retrieve the passages "
             "that document or implement it.",
             {"typing", "collections", "operator", "dataclasses", "enum", "functools", "itertools", "abc", "types",
              "copy", "heapq", "bisect", "array", "decimal", "fractions", "numbers", "statistics", "math", "random",
              "datetime", "calendar", "zoneinfo", "graphlib", "weakref", "contextlib", "struct", "pickle",
              "shelve", "sqlite3", "dbm", "hashlib", "hmac", "secrets", "uuid", "ipaddress"}),
    "System": ("Given a summary of a Python routine for the operating system, files or networking, retrieve the "
               "passages that document or implement it.",
               {"os", "sys", "sysconfig", "subprocess", "shutil", "pathlib", "ftplib", "http", "urllib", "socket",
                "socketserver", "asyncio", "ssl", "logging", "multiprocessing", "concurrent", "threading",
                "tempfile", "zipfile", "tarfile", "gzip", "bz2", "lzma", "zipapp", "selectors", "signal", "platform",
                "getpass", "netrc", "wsgiref", "xmlrpc", "webbrowser", "venv", "sched", "queue", "filecmp",
                "fileinput", "stat", "posixpath", "ntpath", "mailcap", "nntplib", "telnetlib", "uu", "ctypes"}),
    "Tooling": ("Given a summary of a Python routine for code inspection or the interpreter, retrieve the passages "
                "that document or implement it.",
                {"dis", "ast", "inspect", "tokenize", "token", "rlcompleter", "tabnanny", "pdb", "bdb", "importlib",
                 "pydoc", "compileall", "py_compile", "symtable", "code", "codeop", "traceback", "unittest",
                 "doctest", "argparse", "optparse", "getopt", "cmd", "trace", "profile", "cProfile", "pstats",
                 "timeit", "warnings", "pkgutil", "modulefinder", "runpy", "linecache", "tracemalloc", "keyword",
                 "idlelib", "lib2to3", "pyclbr", "site", "faulthandler", "gc", "atexit", "builtins"}),
}


def standin_domain(label: str) -> str:
    for domain, (_, packages) in STANDIN_DOMAINS.items():
        if label in packages:
            return domain
    names = sorted(STANDIN_DOMAINS)
    return names[int(hashlib.sha1(label.encode()).hexdigest(), 16) % len(names)]


def bright_standin_tasks(corpus_dir, split: str = "test", max_queries: int | None = None,
                         seed: int = 0) -> list[LocalTaskData]:
    """Tasks LocalBright{Text,Data,System,Tooling}Retrieval (domains without rows are left out)."""
    import random

    corpus_dir = _ensure_stdlib(corpus_dir, split)
    by_domain: dict[str, dict] = defaultdict(lambda: {"queries": {}, "corpus": {}, "qrels": defaultdict(dict)})
    for kind in ("docstring", "code"):
        path = corpus_dir / split / f"{kind}.jsonl"
        for row in read_jsonl(path)[0]:
            if "label" not in row.extra:
                raise DataFormatError(path, None, "label", "missing: the stand-in groups rows by their module label")
            dom = by_domain[standin_domain(row.extra["label"])]
            qid = dom["queries"].setdefault(row.query, f"q{len(dom['queries'])}")
            for passage in row.pos:
                did = dom["corpus"].setdefault(passage, f"d{len(dom['corpus'])}")
                dom["qrels"][qid][did] = 1
            for passage in row.neg:
                dom["corpus"].setdefault(passage, f"d{len(dom['corpus'])}")
    out = []
    for domain in STANDIN_DOMAINS:
        if domain not in by_domain:
            log.warning("BRIGHT stand-in: no %s rows in %s/%s", domain, corpus_dir, split)
            continue
        dom = by_domain[domain]
        queries = {qid: text for text, qid in dom["queries"].items()}
        if max_queries and len(queries) > max_queries:
            keep = sorted(random.Random(seed).sample(sorted(queries), max_queries))
            queries = {q: queries[q] for q in keep}
        corpus = {did: text for text, did in dom["corpus"].items()}
        out.append(LocalTaskData(
            f"LocalBright{domain}Retrieval", queries, corpus, dict(dom["qrels"]), STANDIN_DOMAINS[domain][0],
            f"BRIGHT-shaped offline stand-in, domain {domain}: stdlib summaries against the documentation and "
            f"source code of the domain ({split} split).", f"{corpus_dir}/{split}"))
    if len(out) < 2:
        raise EvaluationConfigError(f"BRIGHT stand-in: fewer than two domains have rows in {corpus_dir}/{split}")
    return out


def build_local_tasks(spec: dict, max_queries: int | None = None, seed: int = 0) -> list[LocalTaskData]:
    """The LocalTaskData of one ``benchmark.local_tasks`` entry."""
    spec = dict(spec)
    kind = spec.pop("kind", "auto")
    mq = spec.pop("max_queries", None) or max_queries
    if kind == "stdlib":
        return stdlib_tasks(spec["corpus_dir"], spec.get("split", "test"), mq, seed,
                            tuple(spec.get("kinds") or ("docstring", "code")))
    if kind == "bright_standin":
        return bright_standin_tasks(spec["corpus_dir"], spec.get("split", "test"), mq, seed)
    path = spec.get("path")
    if not path:
        raise EvaluationConfigError(f"local task {spec}: `path` is required for kind {kind!r}")
    p = Path(path).expanduser()
    if kind == "auto":
        if not p.exists():
            raise EvaluationConfigError(f"local task path {p} does not exist")
        kind = "beir" if (p.is_dir() and (p / "corpus.jsonl").exists()) else "jsonl"
    if kind == "beir":
        return [beir_task(p, spec.get("name"), spec.get("split", "test"), spec.get("instruction"), mq, seed)]
    if kind == "jsonl":
        try:
            return jsonl_tasks(p, spec.get("name"), spec.get("instruction"), mq,
                               bool(spec.get("include_negatives", False)), seed)
        except EvaluationConfigError:
            raise
        except Exception as e:
            from reasoning_embed.errors import ReasoningEmbedError

            if isinstance(e, ReasoningEmbedError):
                raise EvaluationConfigError(f"local task {p}: {e}") from e
            raise
    raise EvaluationConfigError(f"local task kind must be stdlib, bright_standin, jsonl, beir or auto, got {kind!r}")
