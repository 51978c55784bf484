"""Backbones that are built, not downloaded: the tiny random-init backbones and the foundry's tiny triple.

A backbone config with ``tiny:`` set names a build, not a directory: ``path`` (e.g.
``outputs/backbones/tiny_random``) is where its builds are cached, each keyed by the hash of the full spec —
``<path>-<hash>/`` for a random init, ``<parent of path>/tiny_triple-<hash>/tiny_<variant>/`` for the foundry's
base/rlvr/sft triple (built together: they share one base). Asking for ``backbone.tiny.seed=7`` or another
``hidden_size`` therefore builds its own copy and never returns a cached model built with other settings.
The spec records the identity of the corpus the tokenizer is trained on (its manifest), not its path.
"""

from __future__ import annotations

from pathlib import Path

from reasoning_embed.assets.cache import build_identity, build_once
from reasoning_embed.assets.corpus import corpus_identity, stdlib_corpus
from reasoning_embed.errors import BackboneNotAvailableError

FOUNDRY_VARIANTS = ("base", "rlvr", "sft")
MODEL_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "tokenizer", "vocab_size")
# the init (models.tiny.tiny_model): the random-init builder's and the foundry's base's
RANDOM_INIT_KEYS = ("residual_init_scale", "embedding_init", "rms_norm_eps")
# the foundry's only: the triple's lexical channel while it is a language model (foundry/lexical.py)
LEXICAL_KEYS = ("lexical_dims", "lexical_gain")


def tiny_backbone(path: str | Path, tiny: dict, corpus_dir: str | Path | None, log=print) -> Path:
    """The directory of the tiny backbone ``tiny`` (built on first use; see the module docstring)."""
    tiny = dict(tiny)
    variant = tiny.get("variant", "base")
    if corpus_dir is None:
        raise BackboneNotAvailableError(f"tiny backbone {path!r} is built on first use and needs corpus_dir "
                                        f"(the stdlib corpus its tokenizer is trained on)")
    corpus = stdlib_corpus(corpus_dir)
    model = {k: tiny[k] for k in MODEL_KEYS if k in tiny}
    init = {k: tiny[k] for k in RANDOM_INIT_KEYS if k in tiny}
    base = {**build_identity(), "corpus": corpus_identity(corpus)}
    target = Path(path)
    if bool(tiny.get("foundry", True)) and variant in FOUNDRY_VARIANTS:
        lexical = {k: tiny[k] for k in LEXICAL_KEYS if k in tiny}
        cfg = {"model": {**model, **init, **lexical}, "seed": int(tiny.get("seed", 0)),
               **(tiny.get("foundry_overrides") or {})}
        log(f"[reasoning-embed] tiny_{variant}: the foundry's base/rlvr/sft triple (built once, offline, ~9 min "
            f"on one CPU core if missing; python -m reasoning_embed.foundry)")
        return foundry_triple(target.parent, corpus, cfg, log=log) / f"tiny_{variant}"
    from reasoning_embed.models.tiny import build_tiny_backbone

    # distinct random inits for the variants of one seed
    seed = int(tiny.get("seed", 0)) + (FOUNDRY_VARIANTS.index(variant) if variant in FOUNDRY_VARIANTS else 0)
    spec = {**base, **_teacher(init), "builder": "reasoning_embed.models.tiny", "variant": variant, "seed": seed,
            "model": model,
            **({"init": init} if init else {})}  # no init key: the cache hash of existing builds is unchanged
    return build_once(target.parent, target.name, spec,
                      lambda staging: build_tiny_backbone(staging, corpus, seed=seed, variant=variant, **model, **init),
                      log=log)


def _teacher(init: dict) -> dict:
    """``{"teacher": identity}`` when the token embeddings are distilled from the shipped MiniLM
    (``models.token_distill``): its weights decide them. Empty otherwise, so other builds keep their hash."""
    if init.get("embedding_init") != "distilled":
        return {}
    from reasoning_embed.models.loading import model_identity, resolve_spec

    return {"teacher": model_identity(resolve_spec("minilm"))}


def foundry_triple(root: str | Path, corpus_dir: str | Path, cfg: dict | None = None, force: bool = False,
                   progress: bool = True, log=print) -> Path:
    """``<root>/tiny_triple-<hash>/`` holding tiny_base, tiny_rlvr, tiny_sft built by the foundry with ``cfg``
    (overrides of ``foundry.build.DEFAULTS``); ``force`` rebuilds it."""
    import shutil

    from reasoning_embed.assets.cache import spec_hash
    from reasoning_embed.foundry.build import DEFAULTS, build_triple, merge

    corpus = stdlib_corpus(corpus_dir)
    full = merge(DEFAULTS, cfg)
    spec = {**build_identity(), "corpus": corpus_identity(corpus), **_teacher(full["model"]),
            "builder": "reasoning_embed.foundry", "config": full}
    if force:
        shutil.rmtree(Path(root) / f"tiny_triple-{spec_hash(spec)}", ignore_errors=True)
    return build_once(root, "tiny_triple", spec,
                      lambda staging: build_triple(staging, corpus, full, progress=progress, log=log), log=log)


def default_paths(paths: dict | None = None) -> dict:
    """``conf/paths/default.yaml`` resolved outside a Hydra run (``output_dir`` left out), updated by ``paths``."""
    from omegaconf import OmegaConf

    from reasoning_embed import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "paths" / "default.yaml")
    if "output_dir" in cfg:
        del cfg["output_dir"]  # ${hydra:...}: only inside a Hydra run
    cfg = OmegaConf.merge({"paths": cfg}, {"paths": dict(paths or {})})
    return OmegaConf.to_container(cfg.paths, resolve=True)


def backbone_config(name: str, paths: dict | None = None) -> dict:
    """``conf/backbone/<name>.yaml`` resolved against ``paths`` (default: ``conf/paths/default.yaml``)."""
    from omegaconf import OmegaConf

    from reasoning_embed import CONF_DIR

    cfg = OmegaConf.merge({"paths": default_paths(paths)}, {"backbone": OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")})
    return OmegaConf.to_container(cfg.backbone, resolve=True)


def materialize_backbone(spec: dict, *, corpus_dir: str | Path | None = None, paths: dict | None = None) -> dict:
    """``spec`` with a loadable ``path``: a config name composed, a tiny backbone built (and ``tiny`` cleared)."""
    from reasoning_embed.models.loading import _is_config_name

    spec = dict(spec)
    if _is_config_name(spec.get("path")) and not Path(str(spec["path"])).exists():
        spec = {**backbone_config(str(spec["path"]), paths), **{k: v for k, v in spec.items() if k not in ("path", "name")}}
    if spec.get("tiny"):
        if corpus_dir is None:
            corpus_dir = Path(default_paths(paths)["data_dir"]) / "stdlib"
        spec["path"] = str(tiny_backbone(spec["path"], spec["tiny"], corpus_dir))
        spec["tiny"] = None
    return spec
