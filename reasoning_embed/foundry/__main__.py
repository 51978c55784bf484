"""``python -m reasoning_embed.foundry [out=DIR] [seed=N] [key=value ...]``: build the tiny base/RLVR/SFT triple.

Writes ``<out>/tiny_base``, ``<out>/tiny_rlvr``, ``<out>/tiny_sft`` (default: the cache ``backbone=tiny_*`` reads,
``outputs/backbones/tiny_triple-<hash of the config>``), each a
Hugging Face ``Qwen2ForCausalLM`` directory with the shared tokenizer and a ``foundry.json``; prints the time
of each stage and the held-out accuracies (Wilson 95 % CI) and LM losses. Options: ``conf/foundry.yaml``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

BUILD_KEYS = ("seed", "threads", "model", "problems", "pretrain", "grpo", "sft", "eval")


def build_cfg(cfg) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    return {k: c[k] for k in BUILD_KEYS if k in c}


@hydra.main(version_base="1.3", config_path="../conf", config_name="foundry")
@user_errors_exit
def main(cfg: DictConfig) -> float:
    quiet_environment()
    import json
    from pathlib import Path

    from reasoning_embed.assets.backbones import foundry_triple
    from reasoning_embed.assets.corpus import stdlib_corpus
    from reasoning_embed.foundry.build import build_triple

    if cfg.get("out"):  # an explicit directory: built there, as asked
        metas = build_triple(Path(cfg.out), stdlib_corpus(cfg.corpus_dir), build_cfg(cfg), progress=cfg.progress)
    else:  # the cache that backbone=tiny_base|tiny_rlvr|tiny_sft read (keyed by the hash of this config)
        out = foundry_triple(cfg.backbones_dir, cfg.corpus_dir, build_cfg(cfg), force=bool(cfg.force),
                             progress=cfg.progress)
        metas = {v: json.loads((out / f"tiny_{v}" / "foundry.json").read_text()) for v in ("base", "rlvr", "sft")}
        print(f"[foundry] triple: {out}")
    for v, m in metas.items():
        lo, hi = m["heldout_accuracy_ci95"]
        print(f"{v:<5s} accuracy {m['heldout_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  "
              f"lm_loss {m['lm_loss_heldout']:.4f}  steps {m['steps']}  tokens {m['tokens']}")
    return metas["rlvr"]["heldout_accuracy"]


if __name__ == "__main__":
    main()
