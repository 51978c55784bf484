"""Cost of the live HRSA callback: the default training run with the callback on and off, side by side.

    .venv/bin/python benchmarks/bench_hrsa_callback.py

Runs `python -m reasoning_embed.train experiment=offline_default` (= make train) in fresh processes, callback off and on (default
frequency), interleaved `--repeats` times, and prints wall and training times, the overhead, and the bytes of probe features stored
per evaluation. Target: at most 5% added wall time.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, enabled: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "reasoning_embed.train", "experiment=offline_default", "logger=csv", "callbacks.progress=null",
           f"hydra.run.dir={out}", f"callbacks.hrsa.enabled={str(enabled).lower()}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="interleaved off/on pairs; the median is reported")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="re-hrsa-cb-"))
    run(tmp / "warm", False)  # builds the corpus and backbone caches once, outside the comparison
    walls = {False: [], True: []}
    trains = {False: [], True: []}
    self_times = []
    for i in range(args.repeats):
        # interleaved, so drifting machine load hits both sides alike; the order alternates between pairs
        for enabled in ((False, True) if i % 2 == 0 else (True, False)):
            wall, m = run(tmp / f"{'on' if enabled else 'off'}{i}", enabled)
            walls[enabled].append(wall)
            trains[enabled].append(m["train_seconds"])
            if enabled:
                self_times.append(m["hrsa_callback_seconds"] / m["train_seconds"])
        print(f"pair {i}: wall off {walls[False][-1]:6.1f} s, on {walls[True][-1]:6.1f} s "
              f"({100 * (walls[True][-1] / walls[False][-1] - 1):+.1f}%); training off {trains[False][-1]:6.1f} s, "
              f"on {trains[True][-1]:6.1f} s ({100 * (trains[True][-1] / trains[False][-1] - 1):+.1f}%)", flush=True)
    med = statistics.median
    feats = sorted(glob.glob(str(tmp / "on0" / "hrsa" / "features" / "step_*.safetensors")))
    sizes = [os.path.getsize(f) for f in feats]
    print(f"\nmedian of {args.repeats}: wall off {med(walls[False]):.1f} s, on {med(walls[True]):.1f} s; "
          f"training off {med(trains[False]):.1f} s, on {med(trains[True]):.1f} s ({len(feats)} evaluations per run)")
    print(f"overhead (median): wall {100 * (med(walls[True]) / med(walls[False]) - 1):+.1f}%, "
          f"training {100 * (med(trains[True]) / med(trains[False]) - 1):+.1f}% (target <= 5%)")
    print(f"time inside the callback (its own timer): {100 * med(self_times):.1f}% of training")
    print(f"probe features per evaluation: {max(sizes)} bytes ({len(feats)} files, {sum(sizes)} bytes in all)")


if __name__ == "__main__":
    main()
