"""GPU acceptance in one command: every GPU-only path of the framework, one table, exit 1 on any failure.

    python benchmarks/gpu_acceptance.py                 # a CUDA machine: about 6-8 min on one H100/H200
    python benchmarks/gpu_acceptance.py --smoke         # any CPU: tiny shapes through the same code (~1-2 min)

Checks (one row each):
- attention: the bidirectional self-check (a late token changes position 0; a padded row equals the row alone)
  at the real Qwen2.5-1.5B and Qwen3-0.6B configs (random init, all 28 layers), sdpa and flash-attention 2
  when the ``flash_attn`` package is installed;
- train: bf16 full fine-tuning steps of a Qwen2.5-1.5B-config model (random init) under the paper recipe
  (AdamW lr 2e-5, weight decay 0.05, temperature 0.02, 1 positive + 3 hard negatives, gradient clipping 1.0,
  activation checkpointing) with gradient caching at global batch 512 and 2048: useful (non-padding)
  tokens/s, MFU (model FLOPs of ``training/throughput.py`` over the GPU's dense bf16 peak), peak memory;
  the same with LoRA (r 16, alpha 32, all linear layers); FSDP2 on one device;
- fsdp: gradients of two steps, validation, HRSA callback and export under FSDP2 equal to one process
  (``benchmarks/fsdp_check.py``) on one device, and on all visible devices when there are several;
- export: the exported directory loaded by sentence-transformers on the GPU gives the encoder's embeddings;
- cka: L x L linear CKA at 29 x 29 layers, 1536 dims, 20,000 tokens on CUDA (``hrsa.CKAAccumulator``) against
  the float64 CPU engine (``hrsa.cka_matrix``) on a subsample of layers;
- packed: the padding-free (packed) path of gradient caching gives the padded path's embeddings.

What the GPU machine needs: torch with CUDA, transformers >= 5.2, lightning, peft, sentence-transformers,
safetensors, torchmetrics (flash-attn optional). hydra, omegaconf, mteb, wandb and faiss are not imported.
The project itself is imported from this checkout (no install needed). Sequence length: ``--seq`` (default
128 on a GPU, so that the two global batches fit the time budget); rows have random lengths up to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

QWEN25_15B = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
QWEN3_06B = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                 max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
# --smoke: the same architectures shrunk (head_dim stays explicit and wider than hidden/heads for Qwen3)
TINY25 = dict(QWEN25_15B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=1200)
TINY3 = dict(QWEN3_06B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, vocab_size=1200)


@dataclass
class Settings:
    device: str
    qwen25: dict
    qwen3: dict
    batches: tuple
    chunk: int
    seq: int
    cka_layers: int
    cka_dim: int
    cka_rows: int
    cka_ref_layers: int
    peak_flops: float | None
    precision: str
    out: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu_acceptance-")))

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"


def settings(args) -> Settings:
    from reasoning_embed.training.throughput import PEAK_BF16_FLOPS

    if args.smoke:
        return Settings("cpu", TINY25, TINY3, (8, 16), 4, 16, 5, 32, 600, 3, None, "32-true")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU version")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return Settings("cuda", QWEN25_15B, QWEN3_06B, (512, 2048), args.chunk, args.seq, 29, 1536, 20000, 4, peak,
                    "bf16-mixed")


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    section: str
    name: str
    ok: bool | None  # None: skipped
    figures: str
    seconds: float


ROWS: list[Row] = []


def check(section: str, name: str):
    """Decorator-free runner: ``with check(...) as rec: rec.figures = ...``; an exception is a FAIL row."""

    class _Rec:
        figures = ""
        skip = False

        def __enter__(self):
            self.start = time.perf_counter()
            return self

        def __exit__(self, exc_type, exc, tb):
            seconds = time.perf_counter() - self.start
            if exc is not None:
                msg = f"{exc_type.__name__}: {exc}".replace("\n", " ")[:300]
                print(f"FAIL {section} / {name}:\n{''.join(traceback.format_exception(exc))[-2000:]}", flush=True)
                ROWS.append(Row(section, name, False, msg, seconds))
            else:
                ROWS.append(Row(section, name, None if self.skip else True, self.figures, seconds))
                print(f"{'SKIP' if self.skip else 'PASS'} {section} / {name}: {self.figures} ({seconds:.1f} s)",
                      flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return exc is None or not issubclass(exc_type, (KeyboardInterrupt, SystemExit))

    return _Rec()


def render(rows: list[Row]) -> str:
    lines = ["| section | check | result | figures | s |", "|---|---|---|---|---|"]
    for r in rows:
        result = "SKIP" if r.ok is None else ("PASS" if r.ok else "FAIL")
        lines.append(f"| {r.section} | {r.name} | {result} | {r.figures} | {r.seconds:.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- models
def _config(spec: dict, **overrides):
    from transformers import Qwen2Config, Qwen3Config

    spec = dict(spec, **overrides)
    cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[spec.pop("model_type")]
    return cls(**spec)


def random_backbone(device: str, spec: dict, attn: str = "sdpa", dtype=torch.float32, **overrides):
    """A random-init backbone of ``spec``, built directly on the device, read bidirectionally."""
    from transformers import AutoModel

    from reasoning_embed.models.attention import set_attention_mode

    config = _config(spec, **overrides)
    set_attention_mode(config, "bidirectional")
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModel.from_config(config, dtype=dtype, attn_implementation=attn)


def attention_impls(s: Settings) -> list[str]:
    import importlib.util

    impls = ["sdpa"]
    if s.device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


def word_tokenizer(n_words: int = 1000):
    """A word-level fast tokenizer made in code (the GPU machine has no hub and no tokenizer files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    words = [f"w{i}" for i in range(n_words)] + list("abcdefghijklmnopqrstuvwxyz") + [":", "\n", "Instruct", "Query"]
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="right", model_max_length=4096)


def backbone_dir(s: Settings, spec: dict, name: str, **overrides) -> Path:
    """A model directory (random weights + the word tokenizer) that the project's loader reads."""
    path = s.out / "backbones" / name
    if not path.exists():
        model = random_backbone("cpu", spec, **overrides)
        model.save_pretrained(path)
        word_tokenizer().save_pretrained(path)
    return path


def texts(n: int, seed: int = 0, max_words: int = 40) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(1000)}" for _ in range(rng.randint(3, max_words))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- sections
def section_attention(s: Settings) -> None:
    from reasoning_embed.models.attention import check_attention

    dtype = torch.bfloat16 if s.device == "cuda" else torch.float32
    for label, spec in (("Qwen2.5-1.5B config", s.qwen25), ("Qwen3-0.6B config", s.qwen3)):
        for attn in attention_impls(s):
            with check("attention", f"{label}, {attn}, padded") as rec:
                model = random_backbone(s.device, spec, attn=attn, dtype=dtype)
                res = check_attention(model, "bidirectional")
                rec.figures = (f"{model.config.num_hidden_layers} layers, position-0 change {res['pos0_change']:.2e}, "
                               f"padding error {res['padding_error']:.1e}")
                del model


def _random_batch(s: Settings, n: int, vocab: int, group: int = 4, seed: int = 0) -> dict:
    """n queries and n x group passages of random lengths (right padding), as the collator makes them."""
    g = torch.Generator().manual_seed(seed)

    def feats(rows, low, high):
        lengths = torch.randint(low, high + 1, (rows,), generator=g)
        ids = torch.randint(10, vocab, (rows, int(lengths.max())), generator=g)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        return {"input_ids": ids * mask, "attention_mask": mask, "prompt_length": torch.zeros(rows, dtype=torch.long)}

    return {"query": feats(n, max(2, s.seq // 8), s.seq // 2), "passages": feats(n * group, s.seq // 4, s.seq),
            "group_size": group}


def measure_training(s: Settings, global_batch: int, lora: bool = False, fsdp: bool = False) -> dict:
    """One warm-up step (a chunk-sized batch), then one timed step at ``global_batch``."""
    from functools import partial

    import lightning as L

    from reasoning_embed.models.encoder import Encoder
    from reasoning_embed.training import throughput
    from reasoning_embed.training.module import ContrastiveModule
    from reasoning_embed.training.strategies import fsdp_strategy

    backbone = random_backbone(s.device, s.qwen25)
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from reasoning_embed.models.lora import apply_lora

        backbone = apply_lora(backbone, r=16, alpha=32, dropout=0.1)
    encoder = Encoder(backbone, tokenizer=None, name="qwen2.5-1.5b-config-random")
    module = ContrastiveModule(encoder, partial(torch.optim.AdamW, lr=2e-5, weight_decay=0.05), temperature=0.02,
                               warmup_ratio=0.03, max_grad_norm=1.0, chunk_size=s.chunk)
    vocab = backbone.config.vocab_size
    batches = [_random_batch(s, s.chunk * 2, vocab, seed=1), _random_batch(s, global_batch, vocab, seed=2)]
    times, peaks = [], []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if s.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if s.device == "cuda":
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(accelerator=s.accelerator, devices=1, strategy=fsdp_strategy() if fsdp else "auto",
                        precision=s.precision, max_steps=len(batches), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[Timer()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    big = batches[-1]
    counts = [throughput.token_counts(big["query"]), throughput.token_counts(big["passages"])]
    useful, squared = sum(c["useful"] for c in counts), sum(c["squared"] for c in counts)
    params, trainable = throughput.parameter_counts(backbone)
    flops = throughput.model_flops(useful, squared, params, trainable, backbone.config.num_hidden_layers,
                                   backbone.config.hidden_size)
    step = times[-1]
    loss = module.last_loss
    if not loss == loss or loss <= 0:  # NaN or impossible
        raise AssertionError(f"training loss is {loss}")
    del module, trainer, encoder, backbone
    if fsdp and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {"step_s": step, "tokens_per_s": useful / step, "mfu": flops / step / s.peak_flops if s.peak_flops else None,
            "peak_gib": peaks[-1] if peaks else None, "useful_tokens": useful, "loss": loss}


def section_training(s: Settings) -> None:
    runs = [(b, False, False) for b in s.batches] + [(b, True, False) for b in s.batches] + [(s.batches[0], False, True)]
    for batch, lora, fsdp in runs:
        label = f"{'LoRA' if lora else 'full FT'}{', FSDP2 1 device' if fsdp else ''}, global batch {batch}, chunk {s.chunk}"
        with check("train", label) as rec:
            r = measure_training(s, batch, lora=lora, fsdp=fsdp)
            mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU n/a (no bf16 peak)"
            mem = f"peak {r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "peak n/a (CPU)"
            rec.figures = f"{r['tokens_per_s']:,.0f} useful tokens/s, {mfu}, {mem}, step {r['step_s']:.1f} s"


def _fsdp_check(s: Settings, bb: Path, out: Path, strategy: str, devices: int, global_batch: int) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fsdp_check.py"), "--backbone", str(bb), "--out", str(out),
           "--strategy", strategy, "--devices", str(devices), "--accelerator", s.accelerator,
           "--global-batch", str(global_batch)]
    # a fresh rendezvous: not the address of a process group this process may still hold
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK",
                                                             "WORLD_SIZE", "NODE_RANK", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(ROOT)
    if s.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}: {proc.stderr[-1500:]}")


def section_fsdp(s: Settings) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fsdp_check import compare

    bb = backbone_dir(s, s.qwen25, "fsdp", num_hidden_layers=2)
    counts = [1] + ([torch.cuda.device_count()] if s.device == "cuda" and torch.cuda.device_count() > 1 else [])
    tol = 1e-4 if s.device == "cpu" else 2e-3  # float32 everywhere; GPU kernels reduce in another order
    for n in counts:
        with check("fsdp", f"FSDP2 on {n} device(s) vs one process: grads, validation, HRSA, export") as rec:
            gb = 8 * n
            _fsdp_check(s, bb, s.out / f"fsdp_single_{n}", "single", 1, gb)
            _fsdp_check(s, bb, s.out / f"fsdp_{n}", "fsdp", n, gb)
            d = compare(s.out / f"fsdp_single_{n}", s.out / f"fsdp_{n}")
            rec.figures = (f"grad max rel {d['grad_max_rel']:.1e}, exported weights {d['exported_weight_max_rel']:.1e}, "
                           f"val {d['val_max_abs']:.1e}, HRSA {d['hrsa_max_abs']:.1e}")
            assert d["sharded"] and d["world_size"] == n, d
            assert max(d["grad_max_rel"], d["exported_weight_max_rel"], d["embedding_max_rel"]) < tol, d


def section_export(s: Settings) -> None:
    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.models.export import export_encoder, load_export

    with check("export", "export -> sentence-transformers on the device, equal embeddings") as rec:
        bb = backbone_dir(s, s.qwen25, "export", num_hidden_layers=2)
        enc = build_encoder({"path": str(bb), "name": "export"}, max_query_length=64, max_passage_length=64).to(s.device)
        rows = texts(32, seed=3)
        ours = enc.encode(rows, is_query=False, batch_size=8)
        st = load_export(export_encoder(enc, s.out / "export_model"), device=s.device)
        theirs = torch.as_tensor(st.encode(rows, batch_size=8, convert_to_numpy=True))
        diff = (ours - theirs).abs().max().item()
        rec.figures = f"{len(rows)} texts, max abs difference {diff:.1e} on {st.device}"
        assert str(st.device).startswith(s.device), st.device
        assert diff < 1e-4, rec.figures


def _fake_layers(L: int, n: int, d: int, device: str, seed: int) -> torch.Tensor:
    """L layers of n token rows: a shared latent structure plus layer-specific noise (float32, like states)."""
    g = torch.Generator(device=device).manual_seed(seed)
    base = torch.randn(n, d, generator=g, device=device)
    mix = torch.randn(d, d, generator=g, device=device) / d ** 0.5
    out = torch.empty(L, n, d, device=device)
    for i in range(L):
        out[i] = base + (i / L) * (base @ mix) + 0.5 * torch.randn(n, d, generator=g, device=device)
    return out


def section_cka(s: Settings) -> None:
    from reasoning_embed.hrsa import CKAAccumulator, cka_matrix

    L, d, n = s.cka_layers, s.cka_dim, s.cka_rows
    with check("cka", f"{L} x {L} layers, {d} dims, {n:,} tokens on {s.device} vs float64 CPU engine") as rec:
        X = _fake_layers(L, n, d, s.device, 0)
        Y = _fake_layers(L, n, d, s.device, 1)
        if s.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        acc = CKAAccumulator(debiased=False, compute_dtype=torch.float32)
        for b in range(0, n, 2048):
            acc.update(X[:, b:b + 2048], Y[:, b:b + 2048])
        full = acc.compute().cpu()
        if s.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if s.device == "cuda" else None
        layers = torch.linspace(0, L - 1, s.cka_ref_layers).round().long()
        ref = cka_matrix(X[layers].double().cpu(), Y[layers].double().cpu())
        diff = (full[layers][:, layers] - ref).abs().max().item()
        mem = f", peak {peak:.1f} GiB" if peak is not None else ""
        rec.figures = (f"{seconds:.1f} s{mem}; {len(layers)} x {len(layers)} layers on all rows in float64 on CPU: "
                       f"max abs difference {diff:.1e}")
        assert full.shape == (L, L) and torch.isfinite(full).all()
        assert diff < 1e-4, rec.figures


def section_packed(s: Settings) -> None:
    from reasoning_embed.training import grad_cache

    check_fn = getattr(grad_cache, "check_packed_equals_padded", None)
    impls = attention_impls(s)
    attn = "flash_attention_2" if "flash_attention_2" in impls else "sdpa"
    with check("packed", f"padding-free path vs padded, {attn}") as rec:
        if check_fn is None:
            rec.skip, rec.figures = True, "no padding-free path in this checkout"
            return
        from reasoning_embed.models.encoder import Encoder

        dtype = torch.bfloat16 if s.device == "cuda" else torch.float32
        enc = Encoder(random_backbone(s.device, s.qwen25, attn=attn, dtype=dtype, num_hidden_layers=4), tokenizer=None)
        feats = {k: v.to(s.device) for k, v in _random_batch(s, 6, enc.backbone.config.vocab_size)["passages"].items()}
        res = check_fn(enc, feats)
        rec.figures = (f"{res['attn_implementation']}: max abs diff {res['max_abs_diff']:.1e}, first-token change "
                       f"{res['first_token_change']:.1e}, other rows {res['other_rows_change']:.1e}")


SECTIONS = {"attention": section_attention, "train": section_training, "fsdp": section_fsdp,
            "export": section_export, "cka": section_cka, "packed": section_packed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, the same code paths")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    ap.add_argument("--seq", type=int, default=128, help="longest row (tokens); rows have random lengths")
    ap.add_argument("--chunk", type=int, default=64, help="gradient caching chunk (queries)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak when the GPU is not in the table")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    s = settings(args)
    if args.smoke:
        torch.set_num_threads(1)  # tiny matrices: OpenMP barriers cost more than they save on a busy CPU
    start = time.perf_counter()
    for name in args.only or list(SECTIONS):
        SECTIONS[name](s)
    total = time.perf_counter() - start
    import transformers

    where = (torch.cuda.get_device_name() + f" x {torch.cuda.device_count()}" if s.device == "cuda" else "CPU (--smoke)")
    print(f"\nGPU acceptance, {time.strftime('%Y-%m-%d')}, {where}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, total {total / 60:.1f} min")
    print(render(ROWS))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in ROWS], indent=1))
    failed = [r for r in ROWS if r.ok is False]
    if failed:
        print(f"{len(failed)} check(s) failed: " + "; ".join(f"{r.section} / {r.name}" for r in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
