"""Benchmark: the offline local tasks scored through the adapter vs by mteb given the exported model as a
plain SentenceTransformer (same prompts), side by side.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_eval_parity.py [--max-queries N] [--threads 1]

The tiny export of bench_eval_throughput.py (built once under outputs/bench/eval). Column "adapter":
``evaluate_model(export, "local")`` — the adapter, the instruction table, exact search through
``reasoning_embed.retrieval.exact_search`` (faiss on CPU). Column "mteb+ST": for each task,
``mteb.evaluate(SentenceTransformerEncoderWrapper(SentenceTransformer(export), model_prompts={"query":
<the same "Instruct: ...\\nQuery: " prompt>}), task, cache=None)`` — mteb's own encoding and torch top-k.
Column "train-val": for the stdlib tasks, ``reasoning_embed.retrieval.evaluate_retrieval`` (the
training-time validation) on the same queries and corpus. Scores are nDCG@10 x100.

Measured here (random-init tiny export, so the scores are low; all queries, 1 thread):

    task                          queries  adapter  mteb+ST  |diff|  train-val
    StdlibDocstringRetrieval          231   2.9740   2.9740  0.0     2.9740
    StdlibCodeRetrieval               469   1.6540   1.6540  0.0     1.6539
    LocalBrightTextRetrieval          183   3.5600   3.5600  0.0
    LocalBrightDataRetrieval          208   2.5280   2.5280  0.0
    LocalBrightSystemRetrieval         51   6.9450   6.9450  0.0
    LocalBrightToolingRetrieval        28  13.0020  13.0020  0.0
    Mean(Task)                              5.1105   5.1105          (wall: adapter 20 s, mteb+ST 18 s)

(train-val 1.65385 vs 1.6540 on StdlibCode is mteb's rounding of every score to 5 decimals of nDCG.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common  # offline environment, repository on sys.path, the shared tiny export
import torch

ROOT = _common.ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-queries", type=int, default=None, help="cap queries per task (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--workdir", default=str(ROOT / "outputs" / "bench" / "eval"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*(model prompts|Model prompts|prompts most often)")
    logging.getLogger("mteb").setLevel(logging.ERROR)
    corpus_dir = ROOT / "outputs" / "data" / "stdlib"
    export = _common.tiny_export(Path(args.workdir), corpus_dir, args.max_len)

    import mteb
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from reasoning_embed.models.export import load_export

    from reasoning_embed.data.jsonl import read_jsonl
    from reasoning_embed.evaluation import evaluate_model
    from reasoning_embed.evaluation.benchmarks import build_tasks, resolve_benchmark_config
    from reasoning_embed.evaluation.instructions import load_instruction_table
    from reasoning_embed.evaluation.model_loading import load_encoder
    from reasoning_embed.retrieval import evaluate_retrieval, retrieval_set_from_rows

    bench = resolve_benchmark_config("local", {"data_dir": str(corpus_dir.parent)})
    bench["max_queries"] = args.max_queries
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = evaluate_model(export, bench, out, batch_size=args.batch_size)
    t_adapter = time.perf_counter() - t0
    ours = {t["task"]: t for t in summary["tasks"]}

    st = load_export(export)
    table = load_instruction_table("e5")
    template = "Instruct: {instruction}\nQuery: "
    theirs = {}
    t0 = time.perf_counter()
    tasks, _ = build_tasks(bench)
    for task in tasks:
        name = task.metadata.name
        prompt = template.format(instruction=table.resolve(name, "Retrieval")[0])
        assert prompt == template.format(instruction=ours[name]["instruction"])
        wrapper = SentenceTransformerEncoderWrapper(st, model_prompts={"query": prompt})
        res = mteb.evaluate(wrapper, task, cache=None, co2_tracker=False, show_progress_bar=False,
                            overwrite_strategy="always",
                            encode_kwargs={"batch_size": args.batch_size, "show_progress_bar": False})
        theirs[name] = 100 * res.task_results[0].scores["test"][0]["ndcg_at_10"]
    t_st = time.perf_counter() - t0

    encoder = load_encoder(export, device="cpu")
    val = {}
    for kind in ("docstring", "code"):
        rows, _ = read_jsonl(corpus_dir / "test" / f"{kind}.jsonl")
        rs = retrieval_set_from_rows(kind, rows, args.max_queries, 0)
        val[f"Stdlib{kind.capitalize()}Retrieval"] = 100 * evaluate_retrieval(encoder, rs, k=10)["ndcg@10"]

    print(f"tiny export {export} | queries per task: {args.max_queries or 'all'} | torch threads "
          f"{torch.get_num_threads()} | nDCG@10 x100")
    print(f"{'task':32s} {'queries':>7s} {'adapter':>9s} {'mteb+ST':>9s} {'|diff|':>9s} {'train-val':>10s}")
    worst = 0.0
    for name, t in ours.items():
        diff = abs(t["score"] - theirs[name])
        worst = max(worst, diff)
        n_q = next(c["n"] for c in summary["calls"] if c["task"] == name and c["prompt_type"] == "query")
        tv = f"{val[name]:10.4f}" if name in val else f"{'-':>10s}"
        print(f"{name:32s} {n_q:7d} {t['score']:9.4f} {theirs[name]:9.4f} {diff:9.2e} {tv}")
    print(f"{'Mean(Task)':32s} {'':7s} {summary['mean_task']:9.4f} {sum(theirs.values()) / len(theirs):9.4f}")
    print(f"max |adapter - mteb+ST| = {worst:.2e} nDCG@10 points  [{'EQUAL' if worst < 1e-3 else 'DIFFERENT'} "
          f"(tolerance 1e-3)]   wall: adapter {t_adapter:.1f} s, mteb+ST {t_st:.1f} s")


if __name__ == "__main__":
    main()
