"""Tokens/s and model FLOPs utilisation of a full fine-tuning contrastive step, with and without caching.

    .venv/bin/python benchmarks/bench_mfu.py                     # GPU: Qwen2.5-1.5B-sized, bf16, random init
    .venv/bin/python benchmarks/bench_mfu.py --size tiny --steps 3   # the same code path on a CPU

The backbone is built from the Qwen2.5-1.5B config (28 layers, d=1536, GQA 12/2 heads, vocab 151,936) with
random weights: no download. The step is the contrastive LightningModule's (bf16-mixed on a GPU, sdpa or
flash-attention 2 when installed), global batch `--batch` queries x (1 + 3) passages of `--seq` tokens,
uncached and with gradient caching (`--chunk`). Model FLOPs per token = 6 x non-embedding parameters
+ 12 x layers x seq x d (bidirectional attention, forward + backward); the re-embedding pass of gradient
caching is not counted as model FLOPs, so caching shows as lower MFU. Peak: the GPU's dense bf16 figure
(H100/H200 989 TFLOP/s, A100 312) or `--peak-tflops`.
"""

import argparse
import json
import time

import _common  # noqa: F401  (offline environment)
import torch

QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1000, max_position_embeddings=512, tie_word_embeddings=True)


def build_module(size: str, device: str, chunk: int | None):
    from functools import partial

    from transformers import AutoModel, Qwen2Config

    from reasoning_embed.models.attention import set_attention_mode
    from reasoning_embed.models.backbone import _best_attn_implementation
    from reasoning_embed.models.encoder import Encoder
    from reasoning_embed.training.module import ContrastiveModule

    config = Qwen2Config(**(QWEN25_15B if size == "1.5b" else TINY))
    set_attention_mode(config, "bidirectional")
    attn = _best_attn_implementation() if device == "gpu" else "sdpa"
    torch.manual_seed(0)
    backbone = AutoModel.from_config(config, dtype=torch.float32, attn_implementation=attn)
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    encoder = Encoder(backbone, tokenizer=None, name=f"qwen2.5-{size}-random")
    module = ContrastiveModule(encoder, partial(torch.optim.AdamW, lr=1e-5), chunk_size=chunk, max_grad_norm=1.0)
    n_params = sum(p.numel() for n, p in backbone.named_parameters() if "embed_tokens" not in n)
    return module, config, n_params


def measure(size, device, batch, seq, chunk, steps) -> dict:
    import lightning as L

    module, config, n_params = build_module(size, device, chunk)
    g = torch.Generator().manual_seed(0)
    feats = lambda n: {"input_ids": torch.randint(10, config.vocab_size, (n, seq), generator=g),  # noqa: E731
                       "attention_mask": torch.ones(n, seq, dtype=torch.long),
                       "prompt_length": torch.zeros(n, dtype=torch.long)}
    data = {"query": feats(batch), "passages": feats(batch * 4), "group_size": 4}
    times = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args):
            if device == "gpu":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            if device == "gpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    class Repeat(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([data] * steps, batch_size=None)

    trainer = L.Trainer(accelerator=device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        precision="bf16-mixed" if device == "gpu" else "32-true", callbacks=[Timer()])
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=Repeat())
    step = sorted(times[1:])[len(times[1:]) // 2]  # median after the warm-up step
    tokens = batch * 5 * seq
    flops_per_token = 6 * n_params + 12 * config.num_hidden_layers * seq * config.hidden_size
    return {"chunk": chunk, "step_s": step, "tokens_per_s": tokens / step, "flops_per_s": tokens * flops_per_token / step,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "gpu" else None,
            "attn": config._attn_implementation, "params_non_embedding": n_params}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["1.5b", "tiny"], default="1.5b")
    ap.add_argument("--batch", type=int, default=None, help="global batch (queries); default 64 on GPU, 8 on CPU")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    device = "gpu" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (64 if device == "gpu" else 8)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if device == "gpu" and peak is None:  # the training module's table (train/mfu)
        from reasoning_embed.training.throughput import device_peak_flops

        peak = device_peak_flops(torch.device("cuda"), "bf16-mixed")
    rows = [measure(args.size, device, batch, args.seq, None, args.steps),
            measure(args.size, device, batch, args.seq, min(args.chunk, batch // 2), args.steps)]
    print(f"{args.size} backbone ({rows[0]['params_non_embedding'] / 1e6:.0f}M non-embedding params), {device}, "
          f"attention {rows[0]['attn']}, batch {batch} x 5 texts x {args.seq} tokens")
    for r in rows:
        mfu = f", MFU {100 * r['flops_per_s'] / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""
        mem = f", peak {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else ""
        print(f"  {'cached, chunk ' + str(r['chunk']) if r['chunk'] else 'uncached':<16}: "
              f"{r['tokens_per_s']:,.0f} tokens/s, {r['flops_per_s'] / 1e12:.2f} TFLOP/s{mfu}{mem}")
    print(f"caching cost: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x (target < 2x)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
