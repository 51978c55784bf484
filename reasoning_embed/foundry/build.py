"""Build the tiny triple: ``base`` (pre-trained), ``rlvr`` (GRPO from base) and ``sft`` (SFT from base).

All three are ``Qwen2ForCausalLM`` directories with the same tokenizer, written to ``<out>/tiny_base``,
``<out>/tiny_rlvr`` and ``<out>/tiny_sft``, each with a ``foundry.json``. The three directories are
staged together and moved into place at the end, so a cached triple always shares one base.
Deterministic on CPU for a given seed and thread count (default 1 thread: the result then does not
depend on the machine's core count).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from reasoning_embed.utils.hashing import spec_hash
from reasoning_embed.utils.io import atomic_dir, atomic_write_json

VARIANTS = ("base", "rlvr", "sft")
DEFAULTS = {
    "seed": 0,
    "threads": 1,
    "model": {"hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 256, "tokenizer": "bpe_code", "vocab_size": 4096, "residual_init_scale": 0.1,
              "embedding_init": "distilled", "rms_norm_eps": 1.0, "lexical_dims": 192, "lexical_gain": 256.0},
    "problems": {"kinds": ["add", "sub", "max", "parity"], "heldout_fraction": 0.25},
    "pretrain": {"steps": 700, "batch_size": 32, "block_size": 64, "lr": 3e-3, "warmup": 30, "weight_decay": 0.1,
                 "stdlib_chars": 600_000, "fact_docs": 40_000, "qa_docs": 4_000, "task_qa_docs": 30_000,
                 "qa_prose_fraction": 0.6},
    "grpo": {"steps": 100, "prompts_per_step": 16, "group_size": 8, "max_new_tokens": 8, "temperature": 1.0,
             "lr": 5e-5, "beta": 0.04, "clip_eps": 0.2, "eps": 1e-4, "ppo_epochs": 1},
    "sft": {"batch_size": 32, "lr": 1e-3},
    "eval": {"per_kind": 48, "max_new_tokens": 24, "lm_blocks": 64, "lm_block_size": 128},
}


def merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def triple_complete(out: str | Path) -> bool:
    """True if ``out`` holds a foundry-built triple sharing one build id."""
    ids = set()
    for v in VARIANTS:
        meta = Path(out) / f"tiny_{v}" / "foundry.json"
        if not meta.is_file():
            return False
        m = json.loads(meta.read_text())
        if m.get("builder") != "reasoning_embed.foundry":
            return False
        ids.add(m.get("triple_id"))
    return len(ids) == 1


class _StageClock:
    """Wall and process-CPU seconds per named stage, logged as each stage ends."""

    def __init__(self, log):
        self.log, self.wall, self.cpu = log, {}, {}
        self.t_all, self.c_all = time.perf_counter(), time.process_time()
        self._cpu_start: dict[float, float] = {}

    def start(self) -> float:  # wall clock; the process CPU time at the same instant is remembered for stop()
        t = time.perf_counter()
        self._cpu_start[t] = time.process_time()
        return t

    def stop(self, name: str, t0: float) -> None:
        self.wall[name] = round(time.perf_counter() - t0, 2)
        self.cpu[name] = round(time.process_time() - self._cpu_start.pop(t0, self.c_all), 2)
        self.log(f"[foundry] stage {name:<10s} {self.wall[name]:8.1f} s wall  {self.cpu[name]:8.1f} s CPU")

    def total(self) -> None:
        self.wall["total"] = round(time.perf_counter() - self.t_all, 2)
        self.cpu["total"] = round(time.process_time() - self.c_all, 2)


def _data(cfg: dict, corpus_dir: Path, clock: _StageClock):
    """The tokenizer, the held-out problems and text blocks, and the pre-training blocks."""
    from reasoning_embed.foundry.pretrain import heldout_text_blocks, pretrain_blocks
    from reasoning_embed.foundry.problems import heldout_eval_set
    from reasoning_embed.models.tiny import make_tokenizer

    t0 = clock.start()
    m, seed = cfg["model"], int(cfg["seed"])
    tok = make_tokenizer(m["tokenizer"], corpus_dir, m["vocab_size"])
    kinds, hf = list(cfg["problems"]["kinds"]), cfg["problems"]["heldout_fraction"]
    eval_set = heldout_eval_set(kinds, cfg["eval"]["per_kind"], seed, hf)
    lm_blocks = heldout_text_blocks(tok, corpus_dir, cfg["eval"]["lm_blocks"], cfg["eval"]["lm_block_size"])
    blocks = pretrain_blocks(tok, corpus_dir, cfg["pretrain"], seed, kinds, hf)
    clock.stop("data", t0)
    return tok, eval_set, lm_blocks, blocks


def _base_model(tok, m: dict, seed: int, corpus_dir: Path, progress: bool):
    """The base before pre-training (``models.tiny.tiny_model``); untied when it carries a lexical channel."""
    from reasoning_embed.models.tiny import tiny_model

    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "residual_init_scale", "embedding_init", "rms_norm_eps")
    return tiny_model(tok, corpus_dir, seed=seed, tie_word_embeddings=not m["lexical_dims"],
                      progress=progress, **{k: m[k] for k in keys})


def _train_variants(cfg: dict, tok, eval_set, lm_blocks, blocks, clock: _StageClock, progress: bool,
                    corpus_dir: Path):
    """Pre-train base, then GRPO (rlvr) and SFT (sft) from it with matched optimizer steps.
    Returns ({variant: model}, {variant: {"train": ..., "eval": (accuracy dict, LM loss)}})."""
    import torch
    from tqdm.auto import tqdm

    from reasoning_embed.foundry.evaluate import heldout_accuracy, lm_loss
    from reasoning_embed.foundry.grpo import grpo_train
    from reasoning_embed.foundry.lexical import HeldChannel, expose
    from reasoning_embed.foundry.pretrain import pretrain
    from reasoning_embed.foundry.problems import train_sampler
    from reasoning_embed.foundry.sft import sft_train

    seed, kinds, hf = int(cfg["seed"]), list(cfg["problems"]["kinds"]), cfg["problems"]["heldout_fraction"]
    t0 = clock.start()
    base = _base_model(tok, cfg["model"], seed, corpus_dir, progress)  # the distilled init runs its teacher here
    clock.stop("init", t0)
    lexical = cfg["model"]["lexical_dims"]
    total = cfg["pretrain"]["steps"] + 2 * cfg["grpo"]["steps"] * cfg["grpo"]["ppo_epochs"]
    bar = tqdm(total=total, desc="foundry", unit="step", disable=not progress, file=sys.stderr,
               mininterval=2.0, dynamic_ncols=True)
    results: dict[str, dict] = {}

    def evaluate(model, name):
        t0 = clock.start()
        acc = heldout_accuracy(model, tok, eval_set, cfg["eval"]["max_new_tokens"])
        loss = lm_loss(model, lm_blocks)
        clock.stop(f"eval_{name}", t0)
        clock.log(f"[foundry] {name:<4s} held-out accuracy {acc['accuracy']:.3f} "
                  f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (n={acc['n']}), lenient {acc['lenient_accuracy']:.3f}  "
                  f"LM loss {loss:.4f}  "
                  f"per kind {json.dumps({k: round(v, 2) for k, v in acc['per_kind'].items()})}")
        return acc, loss

    t0 = clock.start()
    pre = pretrain(base, blocks, cfg["pretrain"], seed, progress=bar,
                   after_step=HeldChannel(base, lexical) if lexical else None)
    clock.stop("pretrain", t0)
    results["base"] = {"train": pre, "eval": evaluate(base, "base")}

    t0 = clock.start()
    rlvr = copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    rl = grpo_train(rlvr, base, tok, train_sampler(kinds, seed, hf), cfg["grpo"], seed + 1, progress=bar,
                    after_step=HeldChannel(rlvr, lexical, pretraining=False) if lexical else None)
    clock.stop("rlvr", t0)
    results["rlvr"] = {"train": rl, "eval": evaluate(rlvr, "rlvr")}

    t0 = clock.start()
    sft_model = copy.deepcopy(base)
    for p in sft_model.parameters():
        p.requires_grad_(True)
    sf = sft_train(sft_model, tok, train_sampler(kinds, seed, hf), cfg["sft"], rl["optimizer_steps"], seed + 2,
                   progress=bar, after_step=HeldChannel(sft_model, lexical, pretraining=False) if lexical else None)
    clock.stop("sft", t0)
    results["sft"] = {"train": sf, "eval": evaluate(sft_model, "sft")}
    bar.close()
    models = {"base": base, "rlvr": rlvr, "sft": sft_model}
    if lexical:  # after RLVR and SFT, which train the language model as pre-training left it (the logits are unchanged)
        for model in models.values():
            expose(model, lexical, cfg["model"]["lexical_gain"])
    return models, results


_HOW = {"base": "causal-LM pre-training (stdlib text + arithmetic facts + Q/A-format arithmetic)",
        "rlvr": "GRPO from base (exact reward, group-relative advantages, k3 KL to base)",
        "sft": "SFT from base on worked solutions (same optimizer steps as rlvr, its own learning rate)"}


def _record(v: str, model, result: dict, cfg: dict, triple_id: str, stage_seconds: dict) -> dict:
    """The ``foundry.json`` of one variant."""
    train, (acc, loss) = result["train"], result["eval"]
    return {
        "variant": v, "builder": "reasoning_embed.foundry", "triple_id": triple_id,
        "parent": None if v == "base" else "tiny_base", "how": _HOW[v],
        "heldout_accuracy": acc["accuracy"], "heldout_accuracy_ci95": acc["ci95"],
        "heldout_correct": acc["correct"], "heldout_n": acc["n"], "heldout_per_kind": acc["per_kind"],
        "heldout_lenient_accuracy": acc["lenient_accuracy"],
        "heldout_lenient_accuracy_ci95": acc["lenient_ci95"],
        "heldout_examples": acc["examples"], "lm_loss_heldout": loss,
        "lm_loss_text": "stdlib corpus val split (modules unseen in training), nats/token",
        "steps": train["steps"], "tokens": train.get("completion_tokens", train.get("tokens")),
        "tokens_processed": train.get("tokens_processed", train.get("tokens")),
        "train": {k: v2 for k, v2 in train.items() if k != "trace"},
        "reward_trace": [round(t["reward"], 3) for t in train.get("trace", [])] or None,
        "seed": int(cfg["seed"]), "threads": cfg.get("threads"), "config": cfg,
        "stage_seconds": dict(stage_seconds), "tokenizer": cfg["model"]["tokenizer"],
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }


def _write_triple(out: Path, tok, models: dict, results: dict, cfg: dict, triple_id: str,
                  clock: _StageClock) -> dict:
    """Stage the three directories together and move them into place (a cached triple shares one base)."""
    t0 = clock.start()
    metas = {}
    with ExitStack() as stack:  # the three directories appear together at the end, or none of them on an error
        staged = {v: stack.enter_context(atomic_dir(out / f"tiny_{v}")) for v in VARIANTS}
        for v in VARIANTS:
            models[v].save_pretrained(staged[v])
            tok.save_pretrained(staged[v])
            metas[v] = _record(v, models[v], results[v], cfg, triple_id, clock.wall)
            atomic_write_json(staged[v] / "foundry.json", metas[v])
    clock.stop("save", t0)
    clock.total()
    for v in VARIANTS:  # record the final stage table (incl. save and total) in every foundry.json
        metas[v]["stage_seconds"] = dict(clock.wall)
        metas[v]["stage_cpu_seconds"] = dict(clock.cpu)
        atomic_write_json(out / f"tiny_{v}" / "foundry.json", metas[v])
    return metas


def build_triple(out: str | Path, corpus_dir: str | Path, cfg: dict | None = None, progress: bool = True,
                 log=print) -> dict:
    """Build base/rlvr/sft into ``out``; return {variant: foundry.json dict}. ``cfg`` overrides DEFAULTS."""
    import torch

    from reasoning_embed.foundry.lexical import check
    from reasoning_embed.models.tiny import check_embedding_init

    cfg = merge(DEFAULTS, cfg)
    m = cfg["model"]
    check_embedding_init(m["embedding_init"])  # before the tokenizer, the data and any training
    check(m["hidden_size"], m["lexical_dims"], m["lexical_gain"])
    out, corpus_dir = Path(out), Path(corpus_dir)
    triple_id = spec_hash(cfg)
    prev_threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    clock = _StageClock(log)
    try:
        tok, eval_set, lm_blocks, blocks = _data(cfg, corpus_dir, clock)
        models, results = _train_variants(cfg, tok, eval_set, lm_blocks, blocks, clock, progress, corpus_dir)
        metas = _write_triple(out, tok, models, results, cfg, triple_id, clock)
        log(f"[foundry] total {clock.wall['total']:.1f} s wall, {clock.cpu['total']:.1f} s CPU "
            f"-> {out}/tiny_{{base,rlvr,sft}}")
        return metas
    finally:
        torch.set_num_threads(prev_threads)
