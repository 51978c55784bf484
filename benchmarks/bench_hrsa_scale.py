"""Benchmark: the L x L CKA at the paper's real size within a memory budget, reading the feature cache.

Run:  .venv/bin/python benchmarks/bench_hrsa_scale.py                 (20,000 tokens; long on a 2-core CPU)
      .venv/bin/python benchmarks/bench_hrsa_scale.py --quick         (5,000 tokens; budgets with the same blocks
                                                                      run once)
      .venv/bin/python benchmarks/bench_hrsa_scale.py --quick --jackknife   (also every pair's jackknife interval)
      .venv/bin/python benchmarks/bench_hrsa_scale.py --quick --block-pairs 1   (each budget computes its first
                                                                      block pair only; wall time extrapolated)

Synthetic features of the real shapes: two "models" of 29 hidden states (embedding output + 28 blocks,
Qwen2.5-1.5B) of width 1536 over N tokens (a shared latent space, layer-specific noise, large per-dimension
means), written once in the feature cache's on-disk format (bfloat16, as a model run in bf16 gives them).
Then, each in its own subprocess so that its peak RSS (``ru_maxrss``, the whole process: interpreter,
torch, statistics, buffers) is clean:

* for budgets of 2, 4 and 8 GB: the plan, the wall time, the peak RSS (target: <= budget + 1 GB) and the
  FLOP/s of the block computation against plain float32 matmuls of the same shapes in the same process
  (target: >= 0.5; Gram route: the plain rate is that of the tile GEMMs themselves, timed inside the run, so
  that the other jobs' load, which moves by 2-3x over minutes here, weighs on both alike). With ``--block-pairs K`` (feature route) only the first K block pairs of the cross pass run (the means
  and self passes run in full); the full wall time is then extrapolated from the time per block pair and
  marked "est.";
* agreement with today's engine (CKAAccumulator, float64 GEMMs, all pairs at once) on a shape it can hold:
  12 x 12 layers of width 128, 2,000 tokens, same cached features, the new engine forced into blocks with
  a 2 MB budget, in its default float32-GEMM mode (max relative difference over the biased and the debiased
  matrices), and in float64 mode.

Measured here (2-core VM shared with other jobs, 2026-11-30). Since the Gram route (kernel space,
``reasoning_embed.hrsa.cka_gram``) is taken where it is cheaper, the 5,000-token run does 2.6 TFLOP instead
of 20; from 2 GB on every panel is held (one read of the cache), so the three budgets give the same blocks
and ``--quick`` runs them once:

    --quick (1 thread; load average 3.2-4.6; whole script 86 s, of which 7 s writing the features)
    budget 2 GB: Gram route, 1 x 1 layer blocks, 7 row panels of 715 (28 tiles, all panels held), passes 2 + 2,
                 state 1.95 GB; peak rss 2.35 GB; wall 62 s (means 0.6 s, tiles 61.6 s);
                 41.4 GFLOP/s vs the same tile GEMMs alone 51.2: ratio 0.81
    budgets 4 and 8 GB: the same blocks (figures carried over)
    agreement (12 x 12 layers, d=128, 2,000 tokens, 2 MB budget): Gram route 4.6e-09 (float32 GEMMs),
                 7.6e-15 (float64); feature route 7.2e-09 / 5.6e-15
    last line: hrsa scale: tokens 5000, budget 8 GB, peak rss 2.35 GB, flops ratio 0.81, max rel diff 4.6e-09

Before the panels were held (10 panels of 500 read 6.5 times, 0.28 GB state), under a load average of 5-8:
``--quick`` 155 s, peak rss 0.91 GB, whole script 200 s; ``--quick --threads 2`` 139 s, 0.94 GB; ``--quick
--jackknife`` (every pair's interval, 100 blocks) 132 s, 0.85 GB: the jackknife costs no measurable time.

Full size, ``--tokens 20000 --budgets 2`` (1 thread, load 3-4.5): Gram route, 12 panels of 1,667 (78 tiles)
read 7.5 times, state 1.31 GB, 39 TFLOP; peak rss 1.96 GB; wall 788 s (whole script 926 s); ratio 0.89.
``--tokens 20000 --budgets 8``: every panel held (7.68 GB state); peak rss 7.90 GB; wall 716 s; ratio 0.73. The feature route at the real size (``--route feature``), measured before
the Gram route existed with ``--block-pairs 1`` (first block pair only, wall extrapolated; load 13-19,
1 thread): 2 GB budget peak rss 2.36 GB, 2438 s est., ratio 0.61; 4 GB 3.98 GB, 3108 s est., 0.88;
``--tokens 1000 --budgets 8``: 6.10 GB, 248 s est., 0.66.

The last line reads ``hrsa scale: tokens N, budget B GB, peak rss P GB, flops ratio R, max rel diff D`` for
the largest budget. ``--threads`` torch threads (default 1: on a shared, loaded 2-core CPU two threads
spin in OpenMP barriers and run slower).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reasoning_embed.hrsa.cka_blocked import cka_matrix_blocked  # noqa: E402
from reasoning_embed.hrsa.cka_gram import choose_plan  # noqa: E402
from reasoning_embed.hrsa.feature_cache import CachedStates, _StatesFile  # noqa: E402

LAYERS, DIM, LATENT, STORAGE = 29, 1536, 64, "bfloat16"
T_START = time.perf_counter()
TEXT_TOKENS = 50                # tokens per synthetic text (the jackknife's unit) with --jackknife
PLAN_GFLOPS = 30.0              # the GEMM rate the plans assume (fixed, so that every budget's plan is reproducible)
THREADS = 1
AGREE = (12, 128, 2000)         # layers, width, tokens of the shape today's engine holds for the agreement check


def write_features(folder: str, n: int, L: int, d: int, seed: int = 0) -> None:
    """Two models' synthetic hidden states, L x n x d each, in the cache format (one layer at a time)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT, generator=g)
    for name, mix in (("a", 1.0), ("b", 0.6)):
        f = _StatesFile(os.path.join(folder, f"{name}.bin"), L, n, d, STORAGE, create=True)
        for layer in range(L):
            W = torch.randn(LATENT, d, generator=g) / LATENT ** 0.5
            noise = 0.2 + layer / L
            x = mix * z @ W + noise * torch.randn(n, d, generator=g) + 3.0 * torch.randn(d, generator=g)
            for s in range(0, n, 4096):
                f.write(layer, s, x[s:s + 4096])
        f.close()


def open_source(folder: str, name: str, n: int, L: int, d: int):
    f = _StatesFile(os.path.join(folder, f"{name}.bin"), L, n, d, STORAGE, create=False)
    st = CachedStates(path=folder, layers=list(range(L)), dim=d, offsets=np.array([0, n]), max_abs=None,
                      max_abs_first=None, file=f)
    return st.source(list(range(L)))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def plain_gflops(plan, d: int, reps: int = 6) -> float:
    """float32 GEMMs of the engine's shape, nothing else: a Gram tile (t x d)(d x t), or a feature-space
    chunk product (chunk x d)^T (chunk x d)."""
    t = plan.row_chunk
    x, y = torch.randn(t, d), torch.randn(t, d)
    gram = getattr(plan, "route", "feature") == "gram"
    out = torch.empty(t, t) if gram else torch.empty(d, d)
    mm = (lambda: torch.mm(x, y.T, out=out)) if gram else (lambda: torch.mm(x.T, y, out=out))  # noqa: E731
    mm()
    t0 = time.perf_counter()
    for _ in range(reps):
        mm()
    flops = 2.0 * t * d * (t if gram else d) * reps
    return flops / (time.perf_counter() - t0) / 1e9


def child_budget(args) -> dict:
    n, L, d = args.tokens, LAYERS, DIM
    src_a, src_b = open_source(args.folder, "a", n, L, d), open_source(args.folder, "b", n, L, d)
    groups = torch.arange(n) // TEXT_TOKENS if args.jackknife else None
    plan = choose_plan(L, L, d, d, n, args.budget, torch.float32, storage_bytes=2, gflops=PLAN_GFLOPS,
                       route=args.route, jackknife_blocks=100 if args.jackknife else 0)
    res = cka_matrix_blocked(src_a, src_b, plan=plan, log=lambda s: None, block_pairs=args.block_pairs or None,
                             jackknife=args.jackknife, groups=groups)
    tm = res.timings
    wall_done = res.seconds
    plain = None
    if getattr(plan, "route", "feature") == "gram":
        flops_done, wall_full, n_pairs = plan.flops, wall_done, 1
        done = n_pairs
        # the tile GEMMs alone, timed inside the same run
        gram_flops = 2.0 * 2 * L * d * sum((e - s) * (e2 - s2) for i, (s, e) in enumerate(plan.panels)
                                            for (s2, e2) in plan.panels[i:])
        plain = gram_flops / tm["gram_gemm_s"] / 1e9
    else:
        pairs = [(Ia, Jb) for Ia in plan.blocks_a for Jb in plan.blocks_b]
        done = tm["block_pairs_done"]
        flops_done = 2.0 * n * d * d * (2 * L + sum(len(Ia) * len(Jb) for Ia, Jb in pairs[:done]))
        per_pair = tm["cross_s"] / max(1, done)
        wall_full = tm["means_s"] + tm["self_s"] + per_pair * len(pairs)
        n_pairs = len(pairs)
    return {"plan": plan.describe(), "route": getattr(plan, "route", "feature"), "block_pairs": n_pairs,
            "block_pairs_done": done, "wall_s": wall_done, "wall_full_s": wall_full,
            "timings": {k: v for k, v in tm.items() if k.endswith("_s") and k != "gram_gemm_s"}, "peak_rss_gb": peak_gb(),
            "gflops": flops_done / wall_done / 1e9, "plain_gflops": plain or plain_gflops(plan, d),
            "state_gb": plan.state_bytes / 1e9, "est_s": plan.est_seconds}


def child_agree(args) -> dict:
    from reasoning_embed.hrsa import CKAAccumulator

    L, d, n = AGREE
    src_a, src_b = open_source(args.folder, "a", n, L, d), open_source(args.folder, "b", n, L, d)
    acc = CKAAccumulator(debiased=True, compute_dtype=torch.float64)
    for s in range(0, n, 1024):
        e = min(n, s + 1024)
        acc.update(torch.stack([src_a.read(k, s, e).double() for k in range(L)]),
                   torch.stack([src_b.read(k, s, e).double() for k in range(L)]))
    ref = [acc.compute(False), acc.compute(True)]
    out = {}
    for route in ("gram", "feature"):
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            res = cka_matrix_blocked(src_a, src_b, memory_budget="2MB", compute_dtype=dtype, route=route,
                                     log=lambda s: None)
            out[f"{route}_{name}"] = max(float(((res.compute(deb) - r).abs() / r.abs()).max())
                                         for deb, r in ((False, ref[0]), (True, ref[1])))
            out[f"{route}_plan"] = res.plan.describe()
    return out


def spawn(mode: str, folder: str, **kw) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--folder", folder, "--threads", str(THREADS)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}"] + ([str(v)] if v != "" else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", default=None)
    p.add_argument("--folder", default="")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--budget", default="8GB")
    p.add_argument("--budgets", default="2,4,8", help="GB, comma separated")
    p.add_argument("--block-pairs", type=int, default=0, help="only the first K block pairs (0: all)")
    p.add_argument("--quick", action="store_true", help="5,000 tokens; budgets with the same blocks run once")
    p.add_argument("--route", default="auto", help="auto | gram | feature (the CKA route; auto: the cheaper)")
    p.add_argument("--jackknife", action="store_true", help="also every layer pair's jackknife interval (100 blocks "
                                                            "of texts of 50 tokens; Gram route)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the HRSA run's default on shared CPUs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_budget(args) if args.child == "budget" else child_agree(args)))
        return
    global THREADS
    THREADS = args.threads
    n = 5000 if args.quick else args.tokens
    print(f"{LAYERS} x {LAYERS} layers, d={DIM}, {n} tokens, {STORAGE} feature cache, torch {torch.__version__}, "
          f"CPU, {args.threads} thread(s), load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench_hrsa_scale_") as tmp:
        big, small = os.path.join(tmp, "big"), os.path.join(tmp, "small")
        os.makedirs(big)
        os.makedirs(small)
        t = time.perf_counter()
        write_features(big, n, LAYERS, DIM)
        write_features(small, AGREE[2], AGREE[0], AGREE[1], seed=1)
        print(f"synthetic features written in {time.perf_counter() - t:.0f} s "
              f"({2 * LAYERS * n * DIM * 2 / 1e9:.2f} GB on disk)")
        agree = spawn("agree", small)
        print(f"agreement with today's engine (CKAAccumulator float64) on {AGREE[0]} x {AGREE[0]} layers, "
              f"d={AGREE[1]}, {AGREE[2]} tokens, 2 MB budget: max rel diff Gram route {agree['gram_float32']:.1e} "
              f"(default float32 GEMMs) / {agree['gram_float64']:.1e} (float64); feature route "
              f"{agree['feature_float32']:.1e} / {agree['feature_float64']:.1e}")
        last, seen = None, {}
        for gb in [float(v) for v in args.budgets.split(",")]:
            same = choose_plan(LAYERS, LAYERS, DIM, DIM, n, f"{gb:g}GB", torch.float32, storage_bytes=2,
                               gflops=PLAN_GFLOPS, route=args.route,
                               jackknife_blocks=100 if args.jackknife else 0).describe().split("; memory")[0]
            if args.quick and same in seen:
                r = seen[same][1]
                print(f"budget {gb:g} GB: the same blocks as at {seen[same][0]:g} GB (a larger budget changes "
                      f"nothing here): figures carried over, not re-run")
                last = (gb, r)
                continue
            extra = {"jackknife": ""} if args.jackknife else {}
            r = spawn("budget", big, tokens=n, budget=f"{gb:g}GB", block_pairs=args.block_pairs, route=args.route,
                      **extra)
            seen[same] = (gb, r)
            est = r["block_pairs_done"] < r["block_pairs"]
            tms = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in r["timings"].items())
            print(f"budget {gb:g} GB: {r['plan']}")
            print(f"    peak rss {r['peak_rss_gb']:.2f} GB (<= {gb + 1:g}: {r['peak_rss_gb'] <= gb + 1}), wall "
                  f"{r['wall_full_s']:.0f} s{' est. (' + str(r['block_pairs_done']) + ' of ' + str(r['block_pairs']) + ' block pairs run: ' + format(r['wall_s'], '.0f') + ' s)' if est else ''}"
                  f" [{tms}], {r['gflops']:.1f} GFLOP/s vs plain matmul "
                  f"{r['plain_gflops']:.1f}: ratio {r['gflops'] / r['plain_gflops']:.2f}")
            last = (gb, r)
        print(f"load average at end {os.getloadavg()[0]:.1f}; whole run {time.perf_counter() - T_START:.0f} s")
    gb, r = last
    D = agree[f"{last[1]['route']}_float32"]
    print(f"hrsa scale: tokens {n}, budget {gb:g} GB, peak rss {r['peak_rss_gb']:.2f} GB, flops ratio "
          f"{r['gflops'] / r['plain_gflops']:.2f}, max rel diff {D:.1e}")


if __name__ == "__main__":
    main()
