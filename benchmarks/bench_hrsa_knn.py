"""Benchmark: peak memory (and time) of exact chunked k-NN Jaccard at 20,000 and 50,000 rows.

Run:  .venv/bin/python benchmarks/bench_hrsa_knn.py            (about 2.5 minutes on the loaded 2-core VM)
      .venv/bin/python benchmarks/bench_hrsa_knn.py --quick    (5,000 and 10,000 rows)

Two fake models, d = 256, sharing a latent structure; knn_jaccard(X, Y, k=(5, 10, 50),
metric="cosine") with the default chunking (chunk_size x n float64 scores, at most 128 MiB).
Each size runs in its own subprocess; peak memory = peak RSS (ru_maxrss) minus the RSS after
the inputs were created, so it is the metric's own working set. A dense n x n float64
similarity matrix, for comparison, would need n^2 * 8 bytes (3.0 GiB at 20k, 18.6 GiB at 50k).

Measured here (2-core AMD EPYC VM, torch 2.13 CPU, 2 threads, machine shared with another job):

    n= 20000: wall  19.9 s   peak +198 MiB over the inputs (78 MiB)    dense n x n fp64: 3.0 GiB
    n= 50000: wall 116.0 s   peak +322 MiB over the inputs (195 MiB)   dense n x n fp64: 18.6 GiB
    (load average 4.6 on the 2 CPUs from another job during the run; whole script 2 min 24 s)

The peak is the 128 MiB score chunk plus a normalised copy of one input (n x d) and the
n x k_max neighbour indices of both inputs, i.e. O(n d + n k), never O(n^2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import psutil
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reasoning_embed.hrsa import knn_jaccard  # noqa: E402

D, LATENT = 256, 32


def data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    X = z @ torch.randn(LATENT, D, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, D, generator=g, dtype=torch.float64)
    Y = z @ torch.randn(LATENT, D, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, D, generator=g, dtype=torch.float64)
    return X, Y


def child(n: int) -> None:
    torch.set_num_threads(2)
    X, Y = data(n)
    base = psutil.Process().memory_info().rss / 2 ** 20
    t0 = time.perf_counter()
    r = knn_jaccard(X, Y, k=(5, 10, 50), metric="cosine")
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(json.dumps({"n": n, "wall_s": wall, "peak_mib": peak, "jaccard": r.jaccard, "chance": r.chance_jaccard,
                      "input_mib": 2 * X.numel() * 8 / 2 ** 20}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args.child)
    print(f"exact chunked k-NN Jaccard, d={D}, k=(5,10,50), cosine, torch {torch.__version__}, 2 threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for n in ((5000, 10000) if args.quick else (20000, 50000)):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        dense = n * n * 8 / 2 ** 30
        print(f"n={n:6d}: wall {r['wall_s']:6.1f} s   peak +{r['peak_mib']:.0f} MiB over inputs "
              f"({r['input_mib']:.0f} MiB)   dense n x n fp64 would be {dense:.1f} GiB   "
              f"J@10={r['jaccard']['10']:.3f} (chance {r['chance']['10']:.4f})")


if __name__ == "__main__":
    main()
