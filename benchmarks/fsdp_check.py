"""FSDP against one process: a few optimizer steps on fixed batches, with validation, the HRSA callback and
export in the loop, writing what the two runs must agree on.

    python benchmarks/fsdp_check.py --backbone DIR --out OUT/single --devices 1 --strategy single
    python benchmarks/fsdp_check.py --backbone DIR --out OUT/fsdp --devices 2 --strategy fsdp
    python benchmarks/fsdp_check.py --compare OUT/single OUT/fsdp      # prints the differences, exit 1 if not equal

With ``--devices N > 1`` Lightning re-runs this script once per extra rank (as torchrun would). Every run sees
the same global batch of ``--global-batch`` queries per step; each of N ranks takes its slice. ``grads.pt``
holds the full gradient (after the cross-rank reduction, before clipping and the optimizer step) of every
step; ``result.json`` the held-out validation and HRSA records; ``model/`` the export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _text(i: int, n: int = 6, salt: int = 0) -> str:
    return " ".join(WORDS[(i * 7 + j * (3 + salt)) % len(WORDS)] for j in range(n + i % 3))


def _batches(encoder, global_batch: int, steps: int, rank: int, world: int, group: int = 4) -> list[dict]:
    """Step s: queries s*B .. s*B+B-1 of the fixed stream, this rank's contiguous slice, 1 positive + 3 negatives."""
    per_rank = global_batch // world
    out = []
    for s in range(steps):
        ids = [s * global_batch + rank * per_rank + k for k in range(per_rank)]
        queries = [_text(i) for i in ids]
        passages = [_text(i + g, salt=g) for i in ids for g in range(group)]
        out.append({"query": encoder.tokenizer.queries(queries, ["Retrieve the matching word list"] * len(ids)),
                    "passages": encoder.tokenizer.passages(passages), "group_size": group})
    return out


def _val_set():
    from reasoning_embed.retrieval import RetrievalSet

    corpus = [_text(i, salt=1) for i in range(12)]
    return RetrievalSet("words", [_text(i) for i in range(6)], ["Retrieve the matching word list"] * 6, corpus,
                        [{i: 1} for i in range(6)])


def _grad_probe(path: Path):
    import lightning as L

    class GradProbe(L.Callback):
        """Full gradients (gathered from the shards on every rank) of every step, saved by rank 0."""

        def __init__(self):
            self.grads = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            step = {}
            for name, p in pl_module.encoder.named_parameters():
                if p.grad is not None:
                    g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                    step[name] = g.detach().float().cpu().clone()
            self.grads[int(trainer.global_step)] = step
            if trainer.is_global_zero:
                torch.save(self.grads, path)

    return GradProbe()


def run(args) -> None:
    from functools import partial

    import lightning as L

    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.models.export import export_encoder
    from reasoning_embed.training.hrsa_callback import HRSACallback
    from reasoning_embed.training.module import ContrastiveModule
    from reasoning_embed.training.strategies import fsdp_strategy, full_encoder, is_sharded

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    L.seed_everything(0)
    finetune = {"mode": "lora", "r": 4, "alpha": 8, "dropout": 0.0} if args.lora else None
    encoder = build_encoder({"path": args.backbone, "name": "check"}, max_query_length=32, max_passage_length=48,
                            finetune=finetune, gradient_checkpointing=args.checkpointing)
    world = args.devices if args.strategy == "fsdp" else 1
    optimizer = (partial(torch.optim.SGD, lr=args.lr) if args.optimizer == "sgd"
                 else partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.05))
    module = ContrastiveModule(encoder, optimizer, chunk_size=args.chunk, max_grad_norm=1.0, warmup_ratio=0.0)
    module.val_sets = [_val_set()]
    probe = out / f"probe_{rank}.txt"  # one file per rank: no rank reads a file another is writing
    probe.write_text("".join(_text(i, salt=2) + "\n" for i in range(args.n_probe)))
    hrsa = HRSACallback(every_n_steps=1, n_probe=args.n_probe, probe_file=str(probe), batch_size=2,
                        save_features=False, out_dir=str(out))
    strategy = fsdp_strategy(param_dtype=args.param_dtype) if args.strategy == "fsdp" else "auto"
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices if args.strategy == "fsdp" else 1,
                        strategy=strategy, precision=args.precision, max_steps=args.steps, val_check_interval=1,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[_grad_probe(out / "grads.pt"), hrsa], default_root_dir=str(out))
    # the rank is known before fit for the launcher's re-runs (LOCAL_RANK), and 0 for the first process
    batches = _batches(encoder, args.global_batch, args.steps, rank, world)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=torch.utils.data.DataLoader([0], batch_size=1))
    sharded = is_sharded(module.encoder)
    plain = full_encoder(module.encoder)  # every rank joins; rank 0 gets the unsharded copy
    if trainer.is_global_zero:
        export_encoder(plain, out / "model")
        texts = [_text(i, salt=3) for i in range(5)]
        torch.save({"encoder": plain.encode(texts, is_query=False)}, out / "embeddings.pt")
        result = {"world_size": trainer.world_size, "sharded": sharded, "val": module.last_val, "hrsa": hrsa.records}
        (out / "result.json").write_text(json.dumps(result, indent=1))


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def compare(single: Path, other: Path) -> dict:
    """Largest relative differences between two runs' gradients, exported weights, validation and HRSA."""
    from safetensors.torch import load_file

    ga, gb = torch.load(single / "grads.pt"), torch.load(other / "grads.pt")
    if ga.keys() != gb.keys() or any(ga[s].keys() != gb[s].keys() or not ga[s] for s in ga):
        raise AssertionError(f"gradient sets differ: steps {sorted(ga)} vs {sorted(gb)}")
    grad = max(_max_rel(gb[s][k], ga[s][k]) for s in ga for k in ga[s])
    wa = load_file(str(next((single / "model").rglob("model.safetensors"))))
    wb = load_file(str(next((other / "model").rglob("model.safetensors"))))
    if wa.keys() != wb.keys():
        raise AssertionError("exported weights have different names")
    weights = max(_max_rel(wb[k].float(), wa[k].float()) for k in wa)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (single, other))
    val = max(abs(ra["val"][k] - rb["val"][k]) for k in ra["val"]) if ra["val"] else float("nan")
    if ra["val"].keys() != rb["val"].keys() or not ra["val"]:
        raise AssertionError("validation metrics missing or different")
    if [r["step"] for r in ra["hrsa"]] != [r["step"] for r in rb["hrsa"]] or not ra["hrsa"]:
        raise AssertionError("HRSA records missing or at different steps")
    hrsa = max(abs(x[k] - y[k]) for x, y in zip(ra["hrsa"], rb["hrsa"]) for k in x if k != "step")
    ea, eb = torch.load(single / "embeddings.pt"), torch.load(other / "embeddings.pt")
    emb = _max_rel(eb["encoder"], ea["encoder"])
    return {"steps": len(ga), "grad_max_rel": grad, "exported_weight_max_rel": weights, "val_max_abs": val,
            "hrsa_max_abs": hrsa, "embedding_max_rel": emb, "world_size": rb["world_size"], "sharded": rb["sharded"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone")
    ap.add_argument("--out")
    ap.add_argument("--strategy", choices=["single", "fsdp"], default="fsdp")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--param-dtype", default=None, help="FSDP2 mixed precision (e.g. bfloat16)")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=None, help="gradient caching chunk (queries)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--n-probe", type=int, default=9, help="odd: ranks would get unequal shares")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--compare", nargs=2, metavar=("SINGLE", "OTHER"))
    args = ap.parse_args()
    if args.compare:
        print(json.dumps(compare(Path(args.compare[0]), Path(args.compare[1]))))
        return
    run(args)


if __name__ == "__main__":
    main()
