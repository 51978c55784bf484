"""GradCache: the cached step's gradient equals the plain step's, also with dropout (masks replayed)."""

import pytest
import torch

from reasoning_embed.training import grad_cache
from reasoning_embed.training.module import ContrastiveModule
from test_ddp import _assert_same, _grads, dropout_backbone  # noqa: F401  (a fixture)
from reasoning_embed import CONF_DIR


class ChunkedWithGraph(ContrastiveModule):
    """Reference for dropout: embed the module's own planned chunks *with* graph, in the order GradCache's
    first pass uses, so dropout consumes the random stream identically; then one ordinary backward."""

    def _use_cache(self, batch):
        return False

    def _plain_step(self, batch):
        chunks = self._plan(batch)
        embs = [grad_cache.embed_chunk(self.encoder, c) for c in chunks]
        q, p = (grad_cache._in_batch_order(chunks, embs, s, batch[s]["input_ids"].shape[0]) for s in grad_cache.SIDES)
        loss, stats = self._loss(q, p, batch["group_size"])
        self.manual_backward(loss)
        return loss, stats


def test_cached_step_equals_uncached_step(train_cfg, tmp_path):
    plain = _grads(train_cfg, tmp_path, "plain", 8, [])
    cached = _grads(train_cfg, tmp_path, "cached", 8, [], chunk_size=2)
    _assert_same(cached, plain)


def _dropout_grads(train_cfg, tmp_path, name, dropout_backbone, chunk_size, target=None):
    from omegaconf import open_dict

    def make(*overrides):
        cfg = train_cfg(*overrides)
        with open_dict(cfg):
            cfg.backbone.path = str(dropout_backbone)
            if target:
                cfg.model._target_ = target
        return cfg

    return _grads(make, tmp_path, name, 8, [], chunk_size=chunk_size)


def test_dropout_masks_are_replayed(train_cfg, tmp_path, dropout_backbone):
    reference = _dropout_grads(train_cfg, tmp_path, "ref", dropout_backbone, 2, "test_grad_cache.ChunkedWithGraph")
    cached = _dropout_grads(train_cfg, tmp_path, "cached", dropout_backbone, 2)
    _assert_same(cached, reference, rel=1e-5)


def test_without_replay_dropout_breaks_equality(train_cfg, tmp_path, dropout_backbone, monkeypatch):
    """The replay is what makes the previous test pass: disable it and the gradients differ."""
    reference = _dropout_grads(train_cfg, tmp_path, "ref", dropout_backbone, 2, "test_grad_cache.ChunkedWithGraph")
    monkeypatch.setattr(grad_cache.RandomState, "__enter__", lambda self: self)
    monkeypatch.setattr(grad_cache.RandomState, "__exit__", lambda self, *exc: None)
    cached = _dropout_grads(train_cfg, tmp_path, "noreplay", dropout_backbone, 2)
    with pytest.raises(AssertionError):
        _assert_same(cached, reference, rel=1e-5)


def test_effective_recipe_is_logged(train_cfg, tmp_path, monkeypatch):
    from reasoning_embed.training import module as module_mod

    lines = []
    monkeypatch.setattr(module_mod.log, "info", lambda msg, *a: lines.append(msg % a if a else msg))
    _grads(train_cfg, tmp_path, "log", 8, [], chunk_size=2)
    line = next(x for x in lines if "effective recipe" in x)
    assert "global batch 8 queries (8 per device x 1 devices)" in line
    assert "chunk size 2" in line and "group 4 (1 positive + 3 hard negatives)" in line
    assert "against 32 passages" in line


def test_slurm_launcher_config_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=2",
                                                       "hydra.launcher.gpus_per_node=4", "trainer=ddp",
                                                       "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == 4  # one task per GPU
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.strategy._target_.endswith("DDPStrategy")


# ------------------------------------------------------------------ length-sorted, token-budget chunks
def _length_diverse_batch(encoder, n=8, group=4):
    """Queries of 1-5 words and passages of a few to ~80 tokens, so sorting and trimming matter."""
    from reasoning_embed.data.contrastive import ContrastiveCollator

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    items = [{"instruction": "find the text", "query": " ".join(words[:1 + i % 5]),
              "passages": [" ".join(words * 8)[:10 + 37 * ((i + k) % 5)] for k in range(group)]} for i in range(n)]
    return ContrastiveCollator(encoder.tokenizer)(items)


def _gradients(encoder, step):
    encoder.zero_grad(set_to_none=True)
    step()
    return {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.grad is not None}


def _uncached(encoder, batch):
    from reasoning_embed.training.losses import info_nce

    def step():
        loss, _ = info_nce(encoder(**batch["query"]), encoder(**batch["passages"]), batch["group_size"], 0.02)
        loss.backward()
    return _gradients(encoder, step)


def _cached(encoder, batch, **plan):
    def step():
        chunks = grad_cache.plan_chunks(batch, **plan)
        loss_grads = lambda q, p: grad_cache.embedding_gradients(q, p, lambda x: (x, 0), batch["group_size"], 0.02, 2)  # noqa: E731
        grad_cache.cached_step(encoder, batch, chunks, loss_grads, lambda t: t.backward())
    return _gradients(encoder, step)


def test_sorted_token_budget_chunks_equal_uncached_and_fixed_chunks(micro_encoder):
    """Which rows share a chunk does not change the gradient: sorted token-budget chunks (padded or packed),
    sorted fixed-size chunks and the old batch-order chunks all give the uncached gradient."""
    batch = _length_diverse_batch(micro_encoder)
    plain = _uncached(micro_encoder, batch)
    plans = {"old fixed": dict(chunk_size=2, sort=False), "sorted fixed": dict(chunk_size=2),
             "sorted budget": dict(chunk_size=2, chunk_tokens=120),
             "packed budget": dict(chunk_size=2, chunk_tokens=120, pack=True)}
    for name, plan in plans.items():
        chunks = grad_cache.plan_chunks(batch, **plan)
        assert len(chunks) > 2, name
        _assert_same(_cached(micro_encoder, batch, **plan), plain)


def test_token_budget_bounds_every_chunk_and_a_long_row_stands_alone(micro_encoder):
    batch = _length_diverse_batch(micro_encoder)
    lengths = grad_cache.row_lengths(batch["passages"])
    budget = 2 * max(lengths) - 1  # the longest rows cannot pair up
    chunks = [c for c in grad_cache.plan_chunks(batch, chunk_tokens=budget) if c.side == "passages"]
    seen = sorted(int(i) for c in chunks for i in c.rows)
    assert seen == list(range(len(lengths)))  # every row once
    for c in chunks:
        rows, width = c.feats["input_ids"].shape
        assert width == max(lengths[int(i)] for i in c.rows)  # padded to the chunk's own longest row only
        assert rows * width <= budget or rows == 1
    assert [len(c.rows) for c in chunks if c.feats["input_ids"].shape[1] == max(lengths)] == [1] * lengths.count(max(lengths))
    # one row longer than the whole budget: a chunk of its own, the others still within budget
    assert grad_cache.budget_rows([500, 3, 4, 5, 6], budget=20, max_padding=None) == [[0], [4, 3, 2], [1]]
    # at most 10% padding per chunk: 6 and 5 share (1 of 12 padding), 4 and 3 would not (1 of 8)
    assert grad_cache.budget_rows([500, 3, 4, 5, 6], budget=20) == [[0], [4, 3], [2], [1]]
    lengths = [int(x) for x in torch.randint(1, 512, (300,), generator=torch.Generator().manual_seed(0))]
    for c in grad_cache.budget_rows(lengths, 4096):
        longest = max(lengths[i] for i in c)
        assert len(c) * longest <= 4096 and 1 - sum(lengths[i] for i in c) / (len(c) * longest) <= 0.1


def test_ranks_agree_on_chunk_counts(micro_encoder):
    """Ranks with fewer chunks split their largest ones, so every rank runs as many forwards (FSDP needs it)."""
    batch = _length_diverse_batch(micro_encoder)
    base = grad_cache.plan_chunks(batch, chunk_tokens=200)
    counts = [sum(c.side == s for c in base) for s in grad_cache.SIDES]
    more = grad_cache.plan_chunks(batch, chunk_tokens=200, agree_counts=lambda c: [c[0] + 2, c[1] + 3])
    assert [sum(c.side == s for c in more) for s in grad_cache.SIDES] == [counts[0] + 2, counts[1] + 3]
    _assert_same(_cached(micro_encoder, batch, chunk_tokens=200, agree_counts=lambda c: [c[0] + 2, c[1] + 3]),
                 _uncached(micro_encoder, batch))


def test_packed_chunk_embeds_as_padded_rows_and_stays_bidirectional(micro_encoder):
    """The packing used with flash-attention 2 (checked here through an explicit block-diagonal mask)."""
    batch = _length_diverse_batch(micro_encoder)
    for side in grad_cache.SIDES:
        figures = grad_cache.check_packed_equals_padded(micro_encoder, batch[side])
        assert figures["max_abs_diff"] <= 1e-5 and figures["other_rows_change"] == 0.0


def _budget_grads(train_cfg, tmp_path, name, backbone, trainer_overrides=(), per_device=8, target=None,
                  chunk_tokens=64):
    from omegaconf import open_dict

    def make(*overrides):
        cfg = train_cfg(*overrides)
        with open_dict(cfg):
            cfg.backbone.path = str(backbone)
            cfg.model.chunk_tokens = chunk_tokens
            if target:
                cfg.model._target_ = target
        return cfg

    return _grads(make, tmp_path, name, per_device, list(trainer_overrides), chunk_size=2)


def test_token_budget_dropout_masks_are_replayed(train_cfg, tmp_path, dropout_backbone):
    reference = _budget_grads(train_cfg, tmp_path, "ref", dropout_backbone, target="test_grad_cache.ChunkedWithGraph")
    cached = _budget_grads(train_cfg, tmp_path, "cached", dropout_backbone)
    _assert_same(cached, reference, rel=1e-5)


def test_token_budget_step_logs_tokens_padding_and_mfu(train_cfg, tmp_path, micro_backbone, monkeypatch):
    """Per step: useful and computed tokens, padding fraction, tokens/s and (peak known) MFU."""
    from reasoning_embed.training import module as module_mod

    logged = {}
    original = module_mod.ContrastiveModule.log_dict
    monkeypatch.setattr(module_mod.ContrastiveModule, "log_dict",
                        lambda self, d, **kw: (logged.update(d), original(self, d, **kw))[1])
    from omegaconf import open_dict

    def make(*overrides):
        cfg = train_cfg(*overrides)
        with open_dict(cfg):
            cfg.model.chunk_tokens = 64
            cfg.model.peak_tflops = 1.0
        return cfg

    _grads(make, tmp_path, "log", 8, [], chunk_size=2)
    assert 0 < logged["train/useful_tokens"] <= logged["train/computed_tokens"]
    assert logged["train/padding_fraction"] == pytest.approx(1 - logged["train/useful_tokens"] / logged["train/computed_tokens"])
    assert logged["train/useful_tokens_per_s"] > 0 and 0 < logged["train/mfu"] < 1
