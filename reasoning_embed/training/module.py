"""The contrastive LightningModule: one recipe for every backbone of a study.

Manual optimisation so that gradient caching (``chunk_size``) can run several backward passes per step
and synchronise gradients across devices only on the last one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import lightning as L
import torch

from reasoning_embed.data.contrastive import batch_tokens
from reasoning_embed.training.grad_cache import RandomState, split_features
from reasoning_embed.training.losses import info_nce, info_nce_with_grad

log = logging.getLogger(__name__)


def cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0):
    warmup = max(1, int(math.ceil(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ContrastiveModule(L.LightningModule):
    def __init__(self, encoder, optimizer, temperature: float = 0.02, warmup_ratio: float = 0.03,
                 max_grad_norm: float | None = 1.0, chunk_size: int | None = None, eval_batch_size: int = 64,
                 search_backend: str = "auto"):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer"])
        self.automatic_optimization = False
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.val_sets = []  # RetrievalSets, given by the entry point (from the datamodule)
        self.last_val: dict = {}
        self.last_val_step = -1
        self.effective_recipe = ""
        self._tokens, self._step_time = 0, 0.0
        self.last_loss = float("nan")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = cosine_with_warmup(optimizer, total, self.hparams.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self):
        self._skip_consumed_batches()
        world = self.trainer.world_size
        dm = self.trainer.datamodule
        per_device = getattr(dm, "batch_size", None)
        group = 1 + dm.num_negatives if getattr(dm, "num_negatives", None) else None
        if per_device and group:
            g = per_device * world
            self.effective_recipe = (
                f"effective recipe: global batch {g} queries ({per_device} per device x {world} devices), chunk size "
                f"{self.hparams.chunk_size or 'off (no gradient caching)'}, group {group} (1 positive + {group - 1} "
                f"hard negatives), each query scored against {g * group} passages")
            log.info(self.effective_recipe)

    def on_fit_start(self):
        self.encoder.train()  # from_pretrained returns eval mode

    def configure_model(self):
        from reasoning_embed.training.strategies import configure_sharding

        configure_sharding(self)  # FSDP2: one unit per decoder layer, the backbone as root (no-op otherwise)

    def _skip_consumed_batches(self):
        # Resuming mid-epoch: skip the batches this epoch already consumed (the sampler is deterministic).
        # Lightning does not call on_train_epoch_start when it restarts mid-epoch, hence on_train_start too.
        sampler = getattr(self.trainer.datamodule, "sampler", None)
        if sampler is not None:
            sampler.skip = max(0, self.global_step - self.current_epoch * len(sampler))

    def on_train_epoch_start(self):
        self._skip_consumed_batches()

    def _gather(self, p: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.trainer.world_size > 1:
            all_p = self.all_gather(p, sync_grads=True)
            return all_p.reshape(-1, p.shape[-1]), self.global_rank * p.shape[0]
        return p, 0

    def _loss(self, q, p, group_size):
        p_all, offset = self._gather(p)
        return info_nce(q, p_all, group_size, self.hparams.temperature, offset)

    def _plain_step(self, batch):
        q = self.encoder(**batch["query"])
        p = self.encoder(**batch["passages"])
        loss, stats = self._loss(q, p, batch["group_size"])
        self.manual_backward(loss)
        return loss, stats

    def _cached_step(self, batch):
        """GradCache: embed without graph, take d loss / d embeddings, replay each chunk with graph."""
        c, group = self.hparams.chunk_size, batch["group_size"]
        chunks = [(f, c) for f in split_features(batch["query"], c)]
        chunks += [(f, c * group) for f in split_features(batch["passages"], c * group)]
        states, embs = [], []
        with torch.no_grad():
            for feats, _ in chunks:
                states.append(RandomState())
                embs.append(self.encoder(**feats))
        n_q = len(split_features(batch["query"], c))
        q = torch.cat(embs[:n_q]).detach()
        p = torch.cat(embs[n_q:]).detach().requires_grad_()
        p_all, offset = self._gather(p)  # differentiable all-gather: its backward sums each rank's share
        # the loss gradient, c queries at a time: memory stays flat as the global batch grows
        loss, stats, q_grad, p_all_grad = info_nce_with_grad(q, p_all.detach(), group, self.hparams.temperature,
                                                             offset, chunk_size=c)
        p_grad = p_all_grad if p_all is p else torch.autograd.grad(p_all, p, p_all_grad)[0]
        grads = list(q_grad.split(c)) + list(p_grad.split(c * group))
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        for i, ((feats, _), state, grad) in enumerate(zip(chunks, states, grads)):
            last = i == len(chunks) - 1
            with (contextlib.nullcontext() if last else block_sync()), state:
                emb = self.encoder(**feats)
                self.manual_backward((emb * grad).sum())
        return loss.detach(), stats

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        sched = self.lr_schedulers()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        c = self.hparams.chunk_size
        if c and batch["query"]["input_ids"].shape[0] > c:
            loss, stats = self._cached_step(batch)
        else:
            loss, stats = self._plain_step(batch)
        if self.hparams.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        elapsed = time.perf_counter() - start
        tokens = batch_tokens(batch)
        self._tokens += tokens
        self.last_loss = float(loss.detach())
        self._step_time += elapsed
        self.log_dict({
            "train/loss": loss.detach(), "train/acc": stats["acc"], "train/pos_sim": stats["pos_sim"],
            "train/hardest_neg_sim": stats["hardest_neg_sim"], "train/lr": sched.get_last_lr()[0],
            "train/tokens_per_s": tokens * self.trainer.world_size / elapsed,
        }, prog_bar=False, on_step=True, on_epoch=False, batch_size=batch["query"]["input_ids"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss.detach()

    # ------------------------------------------------------------------ validation: held-out retrieval
    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        val_sets = self.val_sets or getattr(self.trainer.datamodule, "val_sets", [])
        if not val_sets or self.trainer.sanity_checking:
            return
        from reasoning_embed.retrieval import evaluate_retrieval

        results = {}
        for vs in val_sets:
            for name, value in evaluate_retrieval(self.encoder, vs, 10, self.hparams.eval_batch_size,
                                                  self.hparams.search_backend).items():
                results[f"val/{vs.name}/{name}"] = value
        for metric in ("ndcg@10", "recall@10", "mrr@10"):
            values = [v for k, v in results.items() if k.endswith("/" + metric)]
            results[f"val/{metric}"] = sum(values) / len(values)
        self.last_val = results
        self.last_val_step = int(self.global_step)
        # every rank computed the same numbers on the full held-out set: no cross-rank reduction needed
        self.log_dict(results, prog_bar=False, rank_zero_only=True, sync_dist=False)
        self.log("val_ndcg", results["val/ndcg@10"], prog_bar=True, logger=False, rank_zero_only=True)

    def throughput(self) -> float:
        return self._tokens * self.trainer.world_size / self._step_time if self._step_time else 0.0
