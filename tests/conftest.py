"""Shared fixtures: everything offline, tiny and built from files the project makes."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402
from reasoning_embed import CONF_DIR

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


def corpus_overrides(corpus_dir: Path) -> list[str]:
    """Entry-point overrides that read the session's stdlib corpus (``corpus_dir``) as the run's data and tokenizer
    corpus, where the default would build or mine one under ``paths.data_dir``."""
    return [f"data.offline_corpus={corpus_dir}", f"data.train={corpus_dir}/train", f"data.val={corpus_dir}/val",
            f"encoder.corpus_dir={corpus_dir}"]

MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=64, vocab_size=1024)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread avoids OpenMP barriers that cost up to 10x on a busy 2-core box.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    from reasoning_embed.data.stdlib_corpus import build_stdlib_corpus

    return build_stdlib_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def micro_backbone(tmp_path_factory, corpus_dir) -> Path:
    """A 2-layer, 32-wide Qwen2 with a 1,024-id BPE: the smallest real thing the pipeline accepts."""
    from reasoning_embed.models.tiny import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("bb") / "micro", corpus_dir, seed=0, **MICRO)


@pytest.fixture(scope="session")
def micro_code_backbone(tmp_path_factory, corpus_dir) -> Path:
    """`make train`'s backbone (``conf/backbone/tiny_random.yaml``: the ``bpe_code`` tokenizer, whose pipeline
    transformers 5 replaces when it loads a qwen2-config tokenizer, the IDF embedding init, near-linear
    RMSNorms) at the micro backbone's size."""
    from omegaconf import OmegaConf

    from reasoning_embed import CONF_DIR
    from reasoning_embed.assets.backbones import RANDOM_INIT_KEYS
    from reasoning_embed.models.tiny import build_tiny_backbone

    tiny = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "backbone" / "tiny_random.yaml").tiny)
    init = {k: tiny[k] for k in ("tokenizer", *RANDOM_INIT_KEYS)}
    assert init["tokenizer"] == "bpe_code" and init["embedding_init"] == "idf"  # what this fixture stands for
    return build_tiny_backbone(tmp_path_factory.mktemp("bb") / "micro_code", corpus_dir, seed=0, **{**MICRO, **init})


@pytest.fixture
def micro_encoder(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    return build_encoder({"path": str(micro_backbone), "name": "micro"}, max_query_length=32, max_passage_length=48)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fake_hrsa_run(root: Path, name: str, steps, rng, n: int = 24, d: int = 6, base: str | None = None) -> Path:
    """A run directory holding only what realignment reads: its Hydra config and the callback's pooled
    probe embeddings (random, n x d) at each of ``steps``."""
    from omegaconf import OmegaConf

    from reasoning_embed.training.hrsa_callback import save_features

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 1, "finetune": {"mode": "full"}, "data": {"train": "d"},
                                     "backbone": {"name": name, "base": base or name}}), run / ".hydra" / "config.yaml")
    for s in steps:
        save_features(run / "hrsa" / "features" / f"step_{s}.safetensors",
                      {"embeddings": torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32)}, s)
    return run


def synthetic_rows(n: int, prefix: str = "t", negs: int = 3) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
    rows = []
    for i in range(n):
        w = [words[(i * 7 + j) % len(words)] for j in range(4)]
        rows.append({"query": ["Given a word list, retrieve the matching text", f"{prefix}{i} {' '.join(w)}"],
                     "pos": [f"text {prefix}{i} about {' and '.join(w)}"],
                     "neg": [f"text {prefix}{(i + k + 1) % n} about {words[(i + k) % len(words)]}"
                             for k in range(negs)]})
    return rows


@pytest.fixture
def train_cfg(micro_backbone, corpus_dir, tmp_path):
    """The train config composed through Hydra, shrunk to a few CPU-seconds, writing under tmp_path."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["debug=fast", "logger=none", *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(corpus_dir.parent)
            cfg.data.offline_corpus = str(corpus_dir)
            cfg.data.mine_reference = None  # the raw corpus: mining with MiniLM is tested on its own
            cfg.data.train = str(corpus_dir / "train")
            cfg.data.val = str(corpus_dir / "val")
            cfg.encoder.corpus_dir = str(corpus_dir)
            cfg.backbone.path = str(micro_backbone)
            cfg.backbone.tiny = None
            cfg.callbacks.progress = None
        return cfg

    return make


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """An entry point run in-process with ``hydra/job_logging=disabled`` applies ``disable_existing_loggers:
    true`` and a root level of ERROR; without this, every later test that reads a log through ``caplog`` would
    see nothing, depending only on test order."""
    import logging

    root_level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(root_level)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.disabled = False


def run_short_training(train_cfg, out, *extra, stop_at=None, ckpt_path=None, validate=False):
    """Six steps of the micro training run into ``out`` (no export), optionally stopped after ``stop_at`` steps
    with a checkpoint or resumed from ``ckpt_path``; the resume tests of several files share it. Returns the
    metrics and the messages of every warning raised."""
    import warnings

    from omegaconf import open_dict

    from reasoning_embed.train import train

    cfg = train_cfg("trainer.max_steps=6", *extra)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.ckpt_path = ckpt_path
        cfg.validate_before_training = validate
        cfg.export = False
        cfg.data.val_max_queries = 4
        if stop_at:
            cfg.extra_callbacks = {"stop": {"_target_": "reasoning_embed.training.callbacks.StopAtStep",
                                            "step": stop_at, "ckpt_path": str(out / "checkpoints" / "last.ckpt")}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    return metrics, [str(w.message) for w in caught]
