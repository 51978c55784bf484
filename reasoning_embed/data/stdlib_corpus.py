"""The offline default corpus: a real-text retrieval set built from the installed Python standard library.

Every function, method or class of the stdlib with a docstring becomes up to two rows:

- ``docstring``: query = the docstring's summary paragraph, positive = the rest of the docstring;
- ``code``:      query = the same summary, positive = the source code with its docstring removed.

Rows are split into train/val/test by *top-level module* (a hash of its name), so no module leaks
across splits. Each row carries ``module`` (dotted) and ``label`` (top-level package) for probes.
Negatives are other definitions of the same module (a cheap, deterministic "hard" negative);
``python -m reasoning_embed.mine`` can replace them with model-mined ones.

Nothing is downloaded: the text is whatever Python is installed, so the corpus is deterministic per
Python version (recorded in ``manifest.json``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

from reasoning_embed.utils.io import atomic_write_text

CORPUS_VERSION = 1
INSTRUCTIONS = {
    "docstring": "Given a one-line summary of a Python function or class, retrieve its documentation",
    "code": "Given a one-line summary of a Python function or class, retrieve its implementation",
}
SPLITS = ("train", "val", "test")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo", "ensurepip"}
_WS = re.compile(r"\s+")


def _split_of(top_module: str) -> str:
    bucket = int(hashlib.sha1(top_module.encode()).hexdigest(), 16) % 10
    return "val" if bucket == 0 else "test" if bucket == 1 else "train"


def _stdlib_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("_") and part != "__init__.py" for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_") and rel.name != "__init__.py":
            continue
        yield path, rel


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _strip_docstring(source: str, node: ast.AST) -> str:
    doc = node.body[0]
    lines = source.splitlines()
    start, end = node.lineno, node.end_lineno
    ds, de = doc.lineno, doc.end_lineno
    kept = lines[start - 1 : ds - 1] + lines[de:end]
    return "\n".join(kept)


def _definitions(tree: ast.Module, source: str):
    """Yield (qualified name, summary, body, code) for documented defs, top level and one class deep."""
    def visit(nodes, prefix):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    paragraphs = doc.split("\n\n", 1)
                    summary = _WS.sub(" ", paragraphs[0]).strip()
                    body = paragraphs[1].strip() if len(paragraphs) > 1 else ""
                    code = _strip_docstring(source, node)
                    yield prefix + node.name, summary, body, code
                if isinstance(node, ast.ClassDef) and not prefix:
                    yield from visit(node.body, node.name + ".")
    yield from visit(tree.body, "")


def collect_rows(stdlib_dir: Path | None = None, max_passage_chars: int = 1500) -> dict[str, list[dict]]:
    """All corpus rows by kind ("docstring", "code"), in a deterministic order."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    rows: dict[str, list[dict]] = {"docstring": [], "code": []}
    seen: dict[str, set] = {"docstring": set(), "code": set()}
    for path, rel in _stdlib_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or Python-2 samples; they are not text we want
        module = _module_name(rel)
        for name, summary, body, code in _definitions(tree, source):
            if not (20 <= len(summary) <= 300):
                continue
            candidates = {"docstring": body, "code": code}
            for kind, passage in candidates.items():
                passage = passage.strip()
                if len(passage) < 40 or summary in seen[kind]:
                    continue  # duplicate summaries ("Return self==value.") make ambiguous queries
                seen[kind].add(summary)
                rows[kind].append({
                    "id": f"{module}:{name}",
                    "module": module,
                    "label": module.split(".")[0],
                    "query_text": summary,
                    "passage": passage[:max_passage_chars],
                })
    return rows


def _attach_negatives(rows: list[dict], num_negatives: int, seed: int) -> list[dict]:
    by_module = defaultdict(list)
    for i, row in enumerate(rows):
        by_module[row["module"]].append(i)
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        pool = [j for j in by_module[row["module"]] if j != i and rows[j]["passage"] != row["passage"]]
        negs = [rows[j]["passage"] for j in rng.sample(pool, min(num_negatives, len(pool)))]
        out.append({
            "query": [INSTRUCTIONS[row["kind"]], row["query_text"]],
            "pos": [row["passage"]],
            "neg": negs,
            "id": row["id"],
            "module": row["module"],
            "label": row["label"],
        })
    return out


def build_stdlib_corpus(out_dir: str | Path, num_negatives: int = 7, seed: int = 0, force: bool = False) -> Path:
    """Build (or reuse) the corpus under ``out_dir``: ``{train,val,test}/{docstring,code}.jsonl`` + manifest."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    stamp = {"version": CORPUS_VERSION, "python": sys.version.split()[0], "seed": seed, "num_negatives": num_negatives}
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if all(manifest.get(k) == v for k, v in stamp.items()):
            return out_dir
    rows = collect_rows()
    counts: dict = {}
    for kind, kind_rows in rows.items():
        for row in kind_rows:
            row["kind"] = kind
        for split in SPLITS:
            split_rows = [r for r in kind_rows if _split_of(r["label"]) == split]
            records = _attach_negatives(split_rows, num_negatives, seed)
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            atomic_write_text(out_dir / split / f"{kind}.jsonl", text)
            counts[f"{split}/{kind}"] = len(records)
    manifest = {**stamp, "counts": counts, "instructions": INSTRUCTIONS, "negatives": "same_module_random"}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return out_dir


if __name__ == "__main__":  # python -m reasoning_embed.data.stdlib_corpus OUT_DIR
    print(build_stdlib_corpus(sys.argv[1] if len(sys.argv) > 1 else "outputs/data/stdlib", force=True))


def corpus_texts(corpus_dir: str | Path, split: str = "train", queries: bool = True):
    """Every query text (unless ``queries`` is false) and positive passage of a built corpus split, file by
    file (sorted), row by row: the plain text the tiny tokenizer and the foundry's pre-training read."""
    from reasoning_embed.data.jsonl import read_jsonl

    for path in sorted((Path(corpus_dir) / split).glob("*.jsonl")):
        for row in read_jsonl(path)[0]:
            if queries:
                yield row.query
            yield from row.pos
