"""Gradient caching: gradient equality, peak memory vs global batch, and the throughput cost.

    .venv/bin/python benchmarks/bench_grad_cache.py [--max-batch 2048]

Each (batch, cached?) configuration runs three training steps on the same batch in its own subprocess, so
peak RSS is measured honestly and throughput is the steady-state step time (trainer start-up and the
first, warm-up step excluded) (CPU here; on a GPU machine the same script reports torch.cuda.max_memory_allocated).
Target: cached peak flat within 1.3x from 64 to 2048 with chunk size 32; caching costs < 2x in throughput.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _common
import torch

SEQ = 32  # tokens per query and per passage in this benchmark
STEPS = 3  # the first step warms up; throughput is the median of the others (trainer start-up excluded)


def make_batch(tokenizer_vocab, n_queries, group=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    def feats(n):
        return {"input_ids": torch.randint(10, tokenizer_vocab, (n, SEQ), generator=g),
                "attention_mask": torch.ones(n, SEQ, dtype=torch.long),
                "prompt_length": torch.zeros(n, dtype=torch.long)}
    return {"query": feats(n_queries), "passages": feats(n_queries * group), "group_size": group}


def one_step(batch_size, chunk, device, out):
    """Child process: one optimizer step of the contrastive module; prints JSON with time and memory."""
    import lightning as L
    from functools import partial

    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.training.module import ContrastiveModule

    torch.set_num_threads(2)
    enc = build_encoder({"path": str(_common.tiny_backbone(64, 2, "gc"))}, check_attention=False)
    batch = make_batch(1000, batch_size)

    class Repeat(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([batch] * STEPS, batch_size=None)

    module = ContrastiveModule(enc, partial(torch.optim.AdamW, lr=1e-5), chunk_size=chunk, max_grad_norm=None)
    grads, step_seconds = {}, []

    def sync():
        if device == "gpu":
            torch.cuda.synchronize()

    class Probe(L.Callback):
        """Keeps the first step's gradients and times every step (forward, backward, optimizer)."""

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not grads:
                grads.update({n: p.grad.detach().clone() for n, p in pl_module.encoder.named_parameters()
                              if p.grad is not None})

        def on_train_batch_start(self, *args):
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            sync()
            step_seconds.append(time.perf_counter() - self.start)

    trainer = L.Trainer(accelerator=device, devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Probe()])
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=Repeat())
    steady = sorted(step_seconds[1:])[len(step_seconds[1:]) // 2]  # median step after the first (warm-up)
    peak = (torch.cuda.max_memory_allocated() if device == "gpu"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if out:
        torch.save(grads, out)
    tokens = batch_size * 5 * SEQ
    print(json.dumps({"batch": batch_size, "chunk": chunk, "step_seconds": steady, "peak_bytes": peak,
                      "tokens_per_s": tokens / steady}))


def run_child(batch, chunk, device, out=""):
    cmd = [sys.executable, __file__, "--child", str(batch), str(chunk or 0), device, out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"batch": batch, "chunk": chunk, "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-batch", type=int, default=2048)
    ap.add_argument("--child", nargs=4)
    args = ap.parse_args()
    if args.child:
        b, c, device, out = args.child
        return one_step(int(b), int(c) or None, device, out)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    _common.tiny_backbone(64, 2, "gc")
    # 1. gradient equality on one global batch (fp32)
    a, b = _common.BENCH / "g_plain.pt", _common.BENCH / "g_cached.pt"
    run_child(64, None, device, str(a))
    run_child(64, 32, device, str(b))
    ga, gb = torch.load(a), torch.load(b)
    rel = max(((ga[k] - gb[k]).abs().max() / ga[k].abs().max().clamp(min=1e-12)).item() for k in ga)
    print(f"gradient equality, batch 64, chunk 32: max relative difference {rel:.2e} (target <= 1e-5)")
    # 2. memory and throughput
    sizes = [s for s in (64, 256, 1024, 2048) if s <= args.max_batch]
    rows = []
    for s in sizes:
        rows.append((run_child(s, 32, device), run_child(s, None, device)))
    unit = "GPU max allocated" if device == "gpu" else "CPU peak RSS"
    print(f"\n{unit} per training step (tiny 2x64 model, {SEQ} tokens per text, 1 query + 4 passages)")
    print(f"{'global batch':>12} | {'cached (chunk 32)':>18} | {'uncached':>12} | {'cached tok/s':>12} | {'uncached tok/s':>14}")
    for cached, plain in rows:
        mem = lambda r: f"{r['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in r else r.get("error", "?")[:12]  # noqa: E731
        tps = lambda r: f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"  # noqa: E731
        print(f"{cached['batch']:>12} | {mem(cached):>18} | {mem(plain):>12} | {tps(cached):>12} | {tps(plain):>14}")
    c0, c1 = rows[0][0], rows[-1][0]
    if "peak_bytes" in c0 and "peak_bytes" in c1:
        print(f"\ncached peak, batch {c1['batch']} / batch {c0['batch']}: {c1['peak_bytes'] / c0['peak_bytes']:.2f}x (target <= 1.3x)")
    costs = [p["tokens_per_s"] / c["tokens_per_s"] for c, p in rows if "tokens_per_s" in c and "tokens_per_s" in p]
    if costs:
        print(f"throughput cost of caching (uncached / cached tokens/s): {', '.join(f'{x:.2f}x' for x in costs)} (target < 2x)")


if __name__ == "__main__":
    main()
