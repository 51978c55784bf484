"""GradCache throughput on length-diverse text: fixed chunks vs length-sorted token-budget chunks vs
sentence-transformers' CachedMultipleNegativesRankingLoss, side by side on the same batches and model.

    .venv/bin/python benchmarks/bench_throughput.py            # global batch 256, 512-token limit, 3 batches
    .venv/bin/python benchmarks/bench_throughput.py --quick    # everything / 8: batch 32, chunk 4, 2048 tokens
    .venv/bin/python benchmarks/bench_throughput.py --padding-only   # padding at batch 256, no model run (seconds)

Corpus: the stdlib retrieval corpus (code and docstrings, a handful to 512 tokens), each batch drawn from
one file as the recipe does, 1 query + 1 positive + 3 hard negatives per row, texts read up to 512 tokens.
Model: the tiny 2-layer, 128-wide Qwen2 (random init), fp32, the paper's temperature 0.02 (scale 50).
(a) today's chunks: ``chunk_size`` queries (x group passages) in batch order, padded to the batch's longest
row; (b) rows sorted by length, cut by ``chunk_tokens`` (rows x longest <= budget), each chunk padded to its
own longest row; (c) sentence-transformers 6.2 ``CachedMultipleNegativesRankingLoss`` on the same
backbone and features (each column padded to its own longest row, its mini-batches trimmed of trailing
padding), at its fastest ``mini_batch_size`` / ``mini_batch_num_tokens`` from a sweep on the first batch.
A step is the gradient computation (embed, loss, replay with backward); the optimizer update is the same
for all and left out. Useful tokens are attended tokens; padding fraction = 1 - useful / computed token
positions (one embedding pass). Peak memory: GPU max allocated, or on CPU the peak RSS growth of one step
in a fresh process per method (/proc VmHWM after clear_refs; (a) and (b) only, as each costs a step). Gradients are compared after the first batch.
Step times are medians over batches; methods run interleaved so a shared CPU loads them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import _common
import torch

GROUP = 4
TEMPERATURE = 0.02


def load_rows(corpus, split="train") -> dict[str, list[dict]]:
    out = {}
    for path in sorted((corpus / split).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.stem] = [r for r in rows if len(r.get("neg", [])) >= GROUP - 1]
    return out


def make_batches(encoder, rows_by_file, n_batches, batch_size, seed=0):
    from reasoning_embed.data.contrastive import ContrastiveCollator

    rng = random.Random(seed)
    files = sorted(rows_by_file)
    collate = ContrastiveCollator(encoder.tokenizer)
    batches = []
    for b in range(n_batches):
        rows = rng.sample(rows_by_file[files[b % len(files)]], batch_size)
        items = [{"instruction": r["query"][0], "query": r["query"][1], "passages": [r["pos"][0]] + r["neg"][:GROUP - 1]}
                 for r in rows]
        batches.append(collate(items))
    return batches


def build_encoder(max_len):
    from reasoning_embed.models.encoder import build_encoder as build

    torch.manual_seed(0)
    return build({"path": str(_common.tiny_backbone())}, max_query_length=max_len, max_passage_length=max_len,
                 check_attention=False)


# ----------------------------------------------------------------------------------------------- methods
def ours(encoder, batch, chunk_size=None, chunk_tokens=None, sort=True):
    """(a)/(b): one GradCache gradient computation; returns computed token positions."""
    from reasoning_embed.training import grad_cache

    chunks = grad_cache.plan_chunks(batch, chunk_size, chunk_tokens, sort=sort)
    loss_grads = lambda q, p: grad_cache.embedding_gradients(q, p, lambda x: (x, 0), GROUP, TEMPERATURE,  # noqa: E731
                                                             chunk_size or 32)
    grad_cache.cached_step(encoder, batch, chunks, loss_grads, lambda t: t.backward())
    return sum(c.feats["input_ids"].numel() for c in chunks)


def st_model(encoder):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(_common.tiny_backbone()))
    transformer.model = encoder.backbone  # the same weights: gradients land in the same parameters
    return SentenceTransformer(modules=[transformer, Pooling(encoder.dim, "mean", include_prompt=False), Normalize()])


def st_features(batch):
    """Queries and one column per passage slot (positive, negative 1, ...), each padded to its own longest."""
    from reasoning_embed.training.grad_cache import take_rows

    n = batch["query"]["input_ids"].shape[0]
    cols = [take_rows(batch["passages"], list(range(k, n * GROUP, GROUP))) for k in range(GROUP)]
    return [dict(batch["query"])] + [{k: v for k, v in c.items() if k != "prompt_length"} for c in cols]


def st_computed_tokens(features, mini_batch_size, mini_batch_num_tokens):
    from sentence_transformers.base.losses.gradcache import _create_minibatch, _minibatch_ranges

    return sum(_create_minibatch(f, b, e)["input_ids"].numel()
               for f in features for b, e in _minibatch_ranges(f, mini_batch_size, mini_batch_num_tokens))


def st(model, batch, mini_batch_size, mini_batch_num_tokens):
    """(c): sentence-transformers' cached MNRL (query -> positive + hard negatives of the whole batch)."""
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    loss = CachedMultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE, mini_batch_size=mini_batch_size,
                                              mini_batch_num_tokens=mini_batch_num_tokens)
    features = st_features(batch)
    loss(features, None).backward()
    return st_computed_tokens(features, mini_batch_size, mini_batch_num_tokens)


def run_method(encoder, model, batch, spec):
    kind, a, b = spec
    if kind == "st":
        return st(model, batch, a, b)
    return ours(encoder, batch, chunk_size=a, chunk_tokens=b, sort=kind == "sorted")


def timed(encoder, model, batch, spec, device):
    encoder.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    computed = run_method(encoder, model, batch, spec)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, computed


def grads(encoder):
    return {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.grad is not None}


def max_rel_diff(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)).item() for k in b)


def useful(batch):
    return int(batch["query"]["attention_mask"].sum() + batch["passages"]["attention_mask"].sum())


# ----------------------------------------------------------------------------------------------- memory
def _rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def child_memory(args):
    """Fresh process: peak RSS growth of one step of one method (CPU)."""
    torch.set_num_threads(args.threads)
    spec = json.loads(args.child)
    encoder = build_encoder(args.max_len)
    encoder.train()
    model = st_model(encoder) if spec[0] == "st" else None
    batch = make_batches(encoder, load_rows(_common.corpus()), 1, args.batch)[0]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    base = _rss_kib("VmRSS:")
    run_method(encoder, model, batch, spec)
    print(json.dumps({"peak_bytes": (_rss_kib("VmHWM:") - base) * 1024}))


def peak_memory(spec, args, device, encoder=None, model=None, batch=None):
    if device == "cuda":
        encoder.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        run_method(encoder, model, batch, spec)
        return torch.cuda.max_memory_allocated()
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--batch", str(args.batch), "--max-len",
           str(args.max_len), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        print(f"  memory child failed for {spec}: {proc.stderr.strip().splitlines()[-1:]}")
        return float("nan")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]


# ----------------------------------------------------------------------------------------------- main
def sweep_st(encoder, model, batch, device, sizes, budgets):
    best = None
    for mbs in sizes:
        for mbnt in [None, *budgets]:
            seconds, computed = timed(encoder, model, batch, ("st", mbs, mbnt), device)
            print(f"  st sweep: mini_batch_size {mbs:>3}, mini_batch_num_tokens {str(mbnt):>6}: {seconds:6.2f} s")
            if best is None or seconds < best[0]:
                best = (seconds, ("st", mbs, mbnt))
    return best[1]


def compare(encoder, model, batches, specs, device, names):
    """Interleaved timing (order rotated per batch), gradients after the first batch."""
    times = {n: [] for n in names}
    computed = {n: 0 for n in names}
    first = {}
    for i, batch in enumerate(batches):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            seconds, comp = timed(encoder, model, batch, specs[name], device)
            times[name].append(seconds)
            computed[name] += comp
            if i == 0:
                first[name] = grads(encoder)
    total_useful = sum(useful(b) for b in batches)
    out = {}
    for name in names:
        step = sorted(times[name])[len(times[name]) // 2]
        out[name] = {"step_s": step, "useful_tok_s": total_useful / len(batches) / step,
                     "padding": 1 - total_useful / computed[name]}
    return out, first


def default_offline(encoder_fn, rows, device, n_batches):
    """The default offline run: global batch 32, queries 40 / passages 64 tokens, no gradient caching."""
    from reasoning_embed.training.losses import info_nce

    encoder = encoder_fn(64)
    encoder.tokenizer.max_query_length = 40
    batches = make_batches(encoder, rows, n_batches, 32, seed=1)
    total_useful = sum(useful(b) for b in batches)
    plain_computed = sum(b["query"]["input_ids"].numel() + b["passages"]["input_ids"].numel() for b in batches)
    specs = {"fixed chunks (8)": ("fixed", 8, None), "sorted, 1024-token chunks": ("sorted", 8, 1024)}
    res, _ = compare(encoder, None, batches, specs, "cpu", list(specs))
    plain = []
    for b in batches:
        encoder.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss, _ = info_nce(encoder(**b["query"]), encoder(**b["passages"]), GROUP, 0.05)
        loss.backward()
        plain.append(time.perf_counter() - start)
    step = sorted(plain)[len(plain) // 2]
    print("\ndefault offline settings (global batch 32, 40/64 tokens; the default run does not cache gradients):")
    print(f"  {'uncached (the default)':<28}: {total_useful / len(batches) / step:>9,.0f} useful tok/s, "
          f"padding {100 * (1 - total_useful / plain_computed):4.1f}%")
    for name, r in res.items():
        print(f"  {'cached, ' + name:<28}: {r['useful_tok_s']:>9,.0f} useful tok/s, padding {100 * r['padding']:4.1f}%")


def padding_only(batches, args):
    from reasoning_embed.training import grad_cache

    total = sum(useful(b) for b in batches)
    plans = {f"(a) fixed, chunk_size {args.chunk_size}": dict(chunk_size=args.chunk_size, sort=False),
             f"(b) sorted, chunk_tokens {args.chunk_tokens}": dict(chunk_size=args.chunk_size, chunk_tokens=args.chunk_tokens)}
    for name, plan in plans.items():
        computed = sum(c.feats["input_ids"].numel() for b in batches for c in grad_cache.plan_chunks(b, **plan))
        print(f"  {name:<44}: padding {100 * (1 - total / computed):5.1f}%")
    for mbs in args.st_sizes or [16, 32, 64]:
        for mbnt in [None, *(args.st_tokens or [8192, 16384])]:
            computed = sum(st_computed_tokens(st_features(b), mbs, mbnt) for b in batches)
            print(f"  {f'(c) st, mini_batch_size {mbs}, num_tokens {mbnt}':<44}: padding {100 * (1 - total / computed):5.1f}%")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the same set-up scaled by 1/8 (global batch 32, chunk_size 4, "
                    "chunk_tokens 2048), 1 batch, a 2-point sentence-transformers sweep")
    ap.add_argument("--batch", type=int, default=None, help="global batch (queries); 256, or 32 with --quick")
    ap.add_argument("--batches", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=None, help="(a): queries per chunk (the paper config's 32)")
    ap.add_argument("--chunk-tokens", type=int, default=None, help="(b): token budget per chunk (16384)")
    ap.add_argument("--st-sizes", type=int, nargs="+", default=None, help="sweep of mini_batch_size (16 32 64)")
    ap.add_argument("--st-tokens", type=int, nargs="+", default=None,
                    help="sweep of mini_batch_num_tokens besides None (8192 16384)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP barriers on a busy CPU)")
    ap.add_argument("--padding-only", action="store_true", help="padding fractions of the chunkings, no timing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_memory(args)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_batches = args.batches or (1 if args.quick else 3)
    scale = 8 if args.quick else 1
    args.batch = args.batch or 256 // scale
    args.chunk_size = args.chunk_size or 32 // scale
    args.chunk_tokens = args.chunk_tokens or 16384 // scale
    encoder = build_encoder(args.max_len).to(device)
    encoder.train()
    model = st_model(encoder)
    rows = load_rows(_common.corpus())
    batches = [{k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in b.items()}
               for b in make_batches(encoder, rows, n_batches, args.batch)]
    lengths = torch.cat([b["passages"]["attention_mask"].sum(1) for b in batches]).float()
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores); {device}, tiny 2x128 model, "
          f"global batch {args.batch} x (1 query + {GROUP} passages), {n_batches} batches")
    print(f"passage tokens: min {lengths.min():.0f}, median {lengths.median():.0f}, max {lengths.max():.0f} "
          f"(limit {args.max_len})")
    if args.padding_only:
        return padding_only(batches, args)
    sizes = args.st_sizes or ([8] if args.quick else [16, 32, 64])
    budgets = args.st_tokens or ([2048] if args.quick else [8192, 16384])
    best_st = sweep_st(encoder, model, batches[0], device, sizes, budgets)
    specs = {"(a) fixed": ("fixed", args.chunk_size, None),
             "(b) sorted": ("sorted", args.chunk_size, args.chunk_tokens),
             "(c) st": best_st}
    names = list(specs)
    res, first = compare(encoder, model, batches, specs, device, names)
    diff = max(max_rel_diff(first[n], first["(a) fixed"]) for n in names[1:])
    print(f"\n{'method':<12} | {'setting':<44} | {'step s':>7} | {'useful tok/s':>12} | {'padding':>7} | {'peak mem':>9}")
    mem = {}
    for name in names:
        kind, a, b = specs[name]
        setting = (f"mini_batch_size {a}, mini_batch_num_tokens {b}" if kind == "st" else
                   f"chunk_size {a}" if kind == "fixed" else f"chunk_tokens {b}")
        skip = name == "(c) st" and device == "cpu"  # a fresh process per figure: a whole extra step on a CPU
        mem[name] = float("nan") if skip else peak_memory(specs[name], args, device, encoder, model, batches[0])
        r = res[name]
        print(f"{name:<12} | {setting:<44} | {r['step_s']:>7.2f} | {r['useful_tok_s']:>12,.0f} | "
              f"{100 * r['padding']:>6.1f}% | {mem[name] / 2**20:>6.0f} MiB")
    print(f"peak memory (b) / (a): {mem['(b) sorted'] / mem['(a) fixed']:.2f} (target <= 1); "
          f"load now {os.getloadavg()[0]:.2f}")
    default_offline(build_encoder, rows, "cpu", n_batches)
    b, a, c = res["(b) sorted"], res["(a) fixed"], res["(c) st"]
    print(f"throughput: sorted/st = {b['useful_tok_s'] / c['useful_tok_s']:.2f}x, "
          f"sorted/fixed = {b['useful_tok_s'] / a['useful_tok_s']:.2f}x, padding = {100 * b['padding']:.1f}%, "
          f"grad max rel diff = {diff:.1e}")


if __name__ == "__main__":
    main()
