"""Training-loop overhead: tokens/s of the LightningModule vs a plain PyTorch loop, side by side.

    .venv/bin/python benchmarks/bench_train_overhead.py [steps]

Same tiny model, same batches (pre-collated), same optimiser, scheduler and clipping; both loops run three times
alternately after a warm-up; steady-state steps 2..N are timed and the best of each is compared. Target: ratio >= 0.9.
"""

import sys
import time

import _common  # noqa: F401
import torch


def batches(n, encoder):
    from reasoning_embed.data.contrastive import ContrastiveCollator, ContrastiveDataset, MixtureBatchSampler
    from reasoning_embed.data.jsonl import data_files, read_jsonl

    files = [[r for r in read_jsonl(f)[0] if r.neg] for f in data_files(_common.corpus() / "train")]
    ds = ContrastiveDataset(files, 3, 0)
    it = iter(MixtureBatchSampler(ds.file_sizes, 32, seed=0))
    col = ContrastiveCollator(encoder.tokenizer)
    return [col([ds[i] for i in next(it)]) for _ in range(n)]


def plain_loop(encoder, data):
    from reasoning_embed.training.losses import info_nce
    from reasoning_embed.utils.schedule import cosine_with_warmup, warmup_steps

    opt = torch.optim.AdamW(encoder.parameters(), lr=3e-4, weight_decay=0.05)
    sched = cosine_with_warmup(opt, len(data), warmup_steps(len(data), 0.03))
    encoder.train()
    tokens, start = 0, None
    for i, b in enumerate(data):
        opt.zero_grad(set_to_none=True)
        loss, _ = info_nce(encoder(**b["query"]), encoder(**b["passages"]), b["group_size"], 0.05)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        if start is None:  # steady state: time steps 2..N (step 1 pays one-off allocations)
            start = time.perf_counter()
            continue
        tokens += int(b["query"]["attention_mask"].sum() + b["passages"]["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def lightning_loop(encoder, data):
    import lightning as L
    from functools import partial

    from reasoning_embed.training.module import ContrastiveModule

    class Fixed(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)

    module = ContrastiveModule(encoder, partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.05), temperature=0.05)
    marks = []

    class Clock(L.Callback):  # the same steady-state window as the plain loop: end of step 1 -> end of step N
        def on_train_batch_end(self, *args):
            marks.append(time.perf_counter())

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(data), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Clock()])
    tokens = sum(int(b["query"]["attention_mask"].sum() + b["passages"]["attention_mask"].sum()) for b in data[1:])
    trainer.fit(module, datamodule=Fixed())
    return tokens / (marks[-1] - marks[0])


def main():
    from reasoning_embed.models.encoder import build_encoder

    torch.set_num_threads(2)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    path = _common.tiny_backbone()
    fresh = lambda: build_encoder({"path": str(path)}, max_query_length=40, max_passage_length=64)  # noqa: E731
    data = batches(steps, fresh())
    plain_loop(fresh(), data[:3])  # warm-up
    results = {"plain": [], "lightning": []}
    for _ in range(3):
        results["plain"].append(plain_loop(fresh(), data))
        results["lightning"].append(lightning_loop(fresh(), data))
    p, lt = max(results["plain"]), max(results["lightning"])
    print(f"steps per run: {steps}, tokens per step: {sum(int(b['query']['attention_mask'].sum() + b['passages']['attention_mask'].sum()) for b in data) // steps}")
    print(f"plain PyTorch loop : {p:10.0f} tokens/s   (runs: {[round(x) for x in results['plain']]})")
    print(f"LightningModule    : {lt:10.0f} tokens/s   (runs: {[round(x) for x in results['lightning']]})")
    import statistics

    med = statistics.median(results["lightning"]) / statistics.median(results["plain"])
    print(f"ratio Lightning / plain: best-of-runs {lt / p:.3f}, median-of-runs {med:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
