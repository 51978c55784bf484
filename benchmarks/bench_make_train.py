"""`make train` from a fresh clone: wall time (install included) and held-out nDCG@10 before/after training.

    .venv/bin/python benchmarks/bench_make_train.py [--keep-venv]

Clones this repository to a temporary directory and runs `make train` there (the package caches make it a "warm
package cache" run). With --keep-venv the current .venv is copied in first, timing the run alone.
Target: under 5 minutes on 2 CPU cores, and trained nDCG@10 clearly above the untrained model's.
"""

import argparse
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep-venv", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="re-make-train-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp / "repo")], check=True)
    repo = tmp / "repo"
    if args.keep_venv:
        shutil.copytree(ROOT / ".venv", repo / ".venv", symlinks=True)
    start = time.perf_counter()
    proc = subprocess.run(["make", "train", "ARGS=logger=csv callbacks.progress=null"], cwd=repo,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit(proc.returncode)
    metrics = json.loads(Path(glob.glob(str(repo / "outputs/train/runs/*/metrics.json"))[0]).read_text())
    print(f"make train wall time: {wall:.0f} s ({'run only, venv copied' if args.keep_venv else 'install + run'})")
    print(f"training: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s, {metrics['tokens_per_s']:.0f} tokens/s")
    for key in ("ndcg@10", "recall@10", "mrr@10"):
        print(f"held-out {key}: untrained {metrics['initial_val'][f'val/{key}']:.4f} -> trained "
              f"{metrics['final_val'][f'val/{key}']:.4f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
