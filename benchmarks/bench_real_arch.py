"""Dry run at the real architectures on a CPU: the paper's recipe for 2 steps with gradient caching at the
Qwen2.5-1.5B and Qwen3-0.6B configs reduced to 2 layers (real hidden size, heads, vocabulary, the real Qwen
tokenizer, random weights, 512-token inputs), then export, load in sentence-transformers (embeddings compared
with the framework's) and evaluate the export on a cut-down `local` benchmark. Prints peak memory and step time.

    .venv/bin/python benchmarks/bench_real_arch.py                       # both families, one child process each
    .venv/bin/python benchmarks/bench_real_arch.py --family qwen3-0.6b --json out.json

Each family runs in its own process, so its peak RSS is its own. tests/test_real_arch.py runs the same child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("qwen2.5-1.5b", "qwen3-0.6b")


class StepTimer(L.Callback):
    """Wall time of each optimizer step (CPU: nothing asynchronous to sync)."""

    seconds: list = []

    def on_train_batch_start(self, *args, **kwargs):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args, **kwargs):
        StepTimer.seconds.append(time.perf_counter() - self._t)


def _long_text(texts: list[str], start: int, chars: int = 6000) -> str:
    out, i = [], start
    while sum(len(t) for t in out) < chars:
        out.append(texts[i % len(texts)])
        i += 1
    return "\n".join(out)


def write_data(corpus_dir: Path, out: Path, rows: int = 4, eval_rows: int = 6) -> dict:
    """Training/validation JSONL whose every text is longer than 512 Qwen tokens, and a cut-down copy of the
    corpus's test split for `local` (``eval_rows`` queries per file, one negative each)."""
    from reasoning_embed.data.jsonl import read_jsonl

    train_rows = [r for f in sorted((corpus_dir / "train").glob("*.jsonl")) for r in read_jsonl(f)[0]]
    texts = [p for r in train_rows[:400] for p in r.pos]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, offset in (("train", 0), ("val", 1000)):
        with open(data / f"{split}.jsonl", "w") as f:
            for i in range(rows):
                k = offset + 10 * i
                f.write(json.dumps({"query": [train_rows[0].instruction, _long_text(texts, k)],
                                    "pos": [_long_text(texts, k + 3)],
                                    "neg": [_long_text(texts, k + 5 + j) for j in range(3)]}) + "\n")
    local = out / "local" / "stdlib" / "test"
    local.mkdir(parents=True, exist_ok=True)
    for kind in ("docstring", "code"):
        rows, labels = [json.loads(line) for line in (corpus_dir / "test" / f"{kind}.jsonl").read_text().splitlines()], set()
        cut = []
        for row in rows:  # one row per module label: the BRIGHT stand-in needs several domains
            if row.get("label") not in labels and len(cut) < eval_rows:
                labels.add(row.get("label"))
                cut.append(row)
        for row in cut:
            row["neg"] = row.get("neg", [])[:1]
        (local / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cut))
    return {"train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"), "local_data_dir": str(out / "local")}


def child(family: str, json_out: str | None, work: Path) -> dict:
    import resource

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from reasoning_embed.models.export import load_export

    from reasoning_embed import CONF_DIR
    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus
    from reasoning_embed.evaluation.runner import evaluate_model
    from reasoning_embed.models.loading import load_encoder
    from reasoning_embed.models.real_arch import build_real_arch
    from reasoning_embed.train import train

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    corpus = work / "corpus"  # a work dir given again (--work) reuses its corpus and backbone
    if not (corpus / "manifest.json").exists():
        corpus = build_stdlib_corpus(corpus)
    data = write_data(corpus, work)
    t0 = time.perf_counter()
    backbone = work / "backbone"
    if not (backbone / "config.json").exists():
        backbone = build_real_arch(backbone, family, num_hidden_layers=2)
    build_s = time.perf_counter() - t0
    run = work / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[  # the paper's recipe: no experiment
            f"backbone.path={backbone}", "backbone.tiny=null", f"backbone.name={family}", "data=jsonl",
            f"data.train={data['train']}", f"data.val={data['val']}", "data.batch_size=2", "model.chunk_size=1",
            "encoder.gradient_checkpointing=true", "trainer.max_steps=2", "logger=none", "callbacks.progress=null",
            "validate_before_training=false", "data.val_max_queries=4"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
        cfg.extra_callbacks = {"timer": {"_target_": "__main__.StepTimer"}}
    done = work / "train_result.json"  # a work dir given again reuses its trained run
    if not done.exists():
        t0 = time.perf_counter()
        metrics = train(cfg)
        done.write_text(json.dumps({"metrics": metrics, "train_seconds": time.perf_counter() - t0,
                                    "step_seconds": StepTimer.seconds,
                                    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20},
                                   default=str))
    trained = json.loads(done.read_text())
    metrics, train_s = trained["metrics"], trained["train_seconds"]
    ours = load_encoder(str(run))
    st = load_export(run / "model")
    val = [json.loads(line) for line in Path(data["val"]).read_text().splitlines()]
    queries, passages = [r["query"][1] for r in val], [p for r in val for p in r["pos"] + r["neg"][:1]]
    instruction = val[0]["query"][0]
    q_len = len(ours.tokenizer.queries(queries[:1], instruction)["input_ids"][0])
    diff = max((st.encode_query(queries, prompt=ours.tokenizer.prompt(instruction), convert_to_tensor=True)
                - ours.encode(queries, instruction)).abs().max().item(),
               (st.encode_document(passages, convert_to_tensor=True) - ours.encode(passages)).abs().max().item())
    summary = evaluate_model(str(run / "model"), "local", work / "eval", paths={"data_dir": data["local_data_dir"]},
                             max_queries=4, batch_size=8, device="cpu")
    result = {
        "family": family, "layers": 2, "params": sum(p.numel() for p in ours.parameters()),
        "hidden_size": ours.dim, "query_tokens": q_len, "steps": metrics["steps"],
        "step_seconds": [round(s, 2) for s in trained["step_seconds"]],
        "peak_rss_gib": trained["peak_rss_gib"],  # build + training (evaluation runs after)
        "build_seconds": build_s, "train_seconds": train_s, "export_max_abs_diff": diff,
        "local_mean_task": summary.get("mean_task"), "local_failed": summary.get("failed"),
        "recipe_differences": metrics.get("recipe_differences"),
    }
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=FAMILIES, help="run one family in this process")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--work", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.family:
        work = Path(args.work or tempfile.mkdtemp(prefix=f"re-real-{args.family}-"))
        print(json.dumps(child(args.family, args.json, work), indent=2))
        return
    print(f"{'family':14s} {'params':>8s} {'peak RSS':>9s} {'step 1':>7s} {'step 2':>7s} {'q tokens':>8s} "
          f"{'export |diff|':>13s} {'local':>6s}")
    for family in FAMILIES:
        with tempfile.TemporaryDirectory(prefix=f"re-real-{family}-") as tmp:
            out = Path(tmp) / "result.json"
            subprocess.run([sys.executable, __file__, "--family", family, "--json", str(out), "--work", tmp],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            r = json.loads(out.read_text())
        steps = r["step_seconds"] + [float("nan")] * 2
        print(f"{family:14s} {r['params'] / 1e6:7.0f}M {r['peak_rss_gib']:8.2f}G {steps[0]:6.1f}s {steps[1]:6.1f}s "
              f"{r['query_tokens']:8d} {r['export_max_abs_diff']:13.2e} {r['local_mean_task']:6.2f}")


if __name__ == "__main__":
    main()
