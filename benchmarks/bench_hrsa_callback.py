"""Cost of the live HRSA callback: the default training run with the callback on and off, side by side.

    .venv/bin/python benchmarks/bench_hrsa_callback.py

Runs `python -m reasoning_embed.train` (the offline default) twice in fresh processes, callback on (default
frequency) and off, and prints wall and training times, the overhead, and the bytes of probe features stored
per evaluation. Target: at most 5% added wall time.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, enabled: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "reasoning_embed.train", "logger=csv", "callbacks.progress=null",
           f"hydra.run.dir={out}", f"callbacks.hrsa.enabled={str(enabled).lower()}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def main():
    tmp = Path(tempfile.mkdtemp(prefix="re-hrsa-cb-"))
    run(tmp / "warm", False)  # builds the corpus and backbone caches once, outside the comparison
    wall_off, m_off = run(tmp / "off", False)
    wall_on, m_on = run(tmp / "on", True)
    feats = sorted(glob.glob(str(tmp / "on" / "hrsa" / "features" / "step_*.safetensors")))
    sizes = [os.path.getsize(f) for f in feats]
    print(f"callback off: wall {wall_off:6.1f} s, training {m_off['train_seconds']:6.1f} s")
    print(f"callback on : wall {wall_on:6.1f} s, training {m_on['train_seconds']:6.1f} s "
          f"({len(feats)} evaluations)")
    print(f"overhead: wall {100 * (wall_on / wall_off - 1):+.1f}%, training {100 * (m_on['train_seconds'] / m_off['train_seconds'] - 1):+.1f}% (target <= 5%)")
    print(f"probe features per evaluation: {max(sizes)} bytes ({len(feats)} files, {sum(sizes)} bytes in all)")


if __name__ == "__main__":
    main()
