"""The contrastive LightningModule: one recipe for every backbone of a study.

Manual optimisation so that gradient caching (``chunk_size`` / ``chunk_tokens``, see ``grad_cache``) can run
several backward passes per step and synchronise gradients across devices only on the last one.
"""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import torch

from reasoning_embed.training import grad_cache, throughput
from reasoning_embed.training.losses import info_nce
from reasoning_embed.utils.schedule import cosine_with_warmup, warmup_steps

log = logging.getLogger(__name__)


class ContrastiveModule(L.LightningModule):
    def __init__(self, encoder, optimizer, temperature: float = 0.02, warmup_ratio: float = 0.03,
                 max_grad_norm: float | None = 1.0, chunk_size: int | None = None, eval_batch_size: int = 64,
                 search_backend: str = "auto", chunk_tokens: int | None = None, pack_chunks: bool | str = "auto",
                 peak_tflops: float | None = None, embedding_lr_scale: float = 1.0):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer"])
        self.automatic_optimization = False
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.val_sets = []  # RetrievalSets, given by the entry point (from the datamodule)
        self.last_val: dict = {}
        self.last_val_step = -1
        self.initial_val: dict = {}  # the untrained model's held-out scores, carried in every checkpoint
        self.last_spread: dict = {}  # embedding spread at the last validation (collapse detection)
        self.collapsed = False
        self.effective_recipe = ""
        self._tokens, self._step_time = 0, 0.0  # useful tokens (all ranks) and synchronised step seconds
        self._flops_shape = None  # (non-embedding params, trainable ones, layers, hidden), set at train start
        self._peak_flops = None
        self.last_loss = float("nan")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        embedding = [p for n, p in named if "embed_tokens" in n]
        scale = self.hparams.embedding_lr_scale
        if scale == 1.0 or not embedding:
            optimizer = self.optimizer_factory([p for _, p in named])
        else:  # the token embeddings in their own group, at scale x the learning rate
            rest = [p for n, p in named if "embed_tokens" not in n]
            optimizer = self.optimizer_factory([{"params": rest}, {"params": embedding}])
            optimizer.param_groups[1]["lr"] *= scale
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = cosine_with_warmup(optimizer, total, warmup_steps(total, self.hparams.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self):
        self._start_throughput()
        world = self.trainer.world_size
        dm = self.trainer.datamodule
        per_device = getattr(dm, "batch_size", None)
        group = 1 + dm.num_negatives if getattr(dm, "num_negatives", None) else None
        if per_device and group:
            g = per_device * world
            self.effective_recipe = (
                f"effective recipe: global batch {g} queries ({per_device} per device x {world} devices), chunk size "
                f"{self._chunking()}, group {group} (1 positive + {group - 1} "
                f"hard negatives), each query scored against {g * group} passages")
            log.info(self.effective_recipe)

    def on_fit_start(self):
        from reasoning_embed.training.strategies import destroy_process_group_at_exit

        self.encoder.train()  # from_pretrained returns eval mode
        destroy_process_group_at_exit()  # every rank, spawned ones too; gloo included (Lightning: NCCL only)

    def configure_model(self):
        from reasoning_embed.training.strategies import configure_sharding

        configure_sharding(self)  # FSDP2: one unit per decoder layer, the backbone as root (no-op otherwise)

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

    def _chunking(self) -> str:
        h = self.hparams
        if h.chunk_tokens:
            return f"{h.chunk_tokens} tokens (length-sorted{', packed' if self._pack() else ''})"
        return f"{h.chunk_size} (length-sorted)" if h.chunk_size else "off (no gradient caching)"

    def _pack(self) -> bool:
        mode = self.hparams.pack_chunks
        if mode is True and not grad_cache.packing_supported(self.encoder):
            raise ValueError("model.pack_chunks=true needs flash_attention_2 on a GPU and right padding; "
                             "use pack_chunks=auto to pack only where supported")
        return bool(mode) and grad_cache.packing_supported(self.encoder)

    def _agree_counts(self, counts: list[int]) -> list[int]:
        """Every rank runs as many chunk forwards as the rank with most (FSDP gathers weights per forward)."""
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return counts
        t = torch.tensor(counts, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()

    def _plan(self, batch) -> list:
        h = self.hparams
        return grad_cache.plan_chunks(batch, h.chunk_size, h.chunk_tokens, pack=self._pack(),
                                      agree_counts=self._agree_counts)

    def _use_cache(self, batch) -> bool:
        """The same answer on every rank (they must run the same collectives): by configuration and batch size."""
        h = self.hparams
        return bool(h.chunk_tokens) or (bool(h.chunk_size) and batch["query"]["input_ids"].shape[0] > h.chunk_size)

    def _cached_step(self, batch, chunks):
        """GradCache (``training/grad_cache.py``) over the planned chunks."""
        h = self.hparams

        def loss_gradients(q, p):
            return grad_cache.embedding_gradients(q, p, self._gather, batch["group_size"], h.temperature,
                                                  h.chunk_size or 32)

        block_sync = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        return grad_cache.cached_step(self.encoder, batch, chunks, loss_gradients, self.manual_backward, block_sync)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        sched = self.lr_schedulers()
        with throughput.StepTimer(self.device) as timer:
            opt.zero_grad(set_to_none=True)
            if self._use_cache(batch):
                chunks = self._plan(batch)
                loss, stats = self._cached_step(batch, chunks)
                inputs = [c.feats for c in chunks]
            else:
                loss, stats = self._plain_step(batch)
                inputs = [batch["query"], batch["passages"]]
            if self.hparams.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
        self.last_loss = float(loss.detach())
        self.log_dict({
            "train/loss": loss.detach(), "train/acc": stats["acc"], "train/pos_sim": stats["pos_sim"],
            "train/hardest_neg_sim": stats["hardest_neg_sim"], "train/lr": sched.get_last_lr()[0],
            **self._throughput_metrics(inputs, timer.seconds),
        }, prog_bar=False, on_step=True, on_epoch=False, batch_size=batch["query"]["input_ids"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss.detach()

    # ------------------------------------------------------------------ throughput
    def _start_throughput(self):
        backbone = self.encoder.backbone
        params, trainable = throughput.parameter_counts(backbone)
        self._flops_shape = (params, trainable, backbone.config.num_hidden_layers, backbone.config.hidden_size)
        self._peak_flops = throughput.device_peak_flops(self.device, self.trainer.precision, self.hparams.peak_tflops)

    def _throughput_metrics(self, inputs: list[dict], seconds: float) -> dict:
        """Tokens of this step summed over ranks (one small all-reduce), rates per synchronised second."""
        counts = [throughput.token_counts(f) for f in inputs]
        t = torch.tensor([sum(c[k] for c in counts) for k in ("useful", "computed", "squared")], dtype=torch.float64)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            t = t.to(self.device)
            torch.distributed.all_reduce(t)
        useful, computed, squared = t.tolist()
        self._tokens += useful
        self._step_time += seconds
        out = {"train/useful_tokens": useful, "train/computed_tokens": computed,
               "train/padding_fraction": 1 - useful / max(computed, 1), "train/step_seconds": seconds,
               "train/useful_tokens_per_s": useful / seconds, "train/computed_tokens_per_s": computed / seconds}
        if self._peak_flops and self._flops_shape:
            flops = throughput.model_flops(int(useful), int(squared), *self._flops_shape)
            out["train/mfu"] = flops / seconds / (self._peak_flops * self.trainer.world_size)
        return out

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
        results.update(self._spread(val_sets))
        self.last_val = results
        self.last_val_step = int(self.global_step)
        # every rank computed the same numbers on the full held-out set: no cross-rank reduction needed
        self.log_dict(results, prog_bar=False, rank_zero_only=True, sync_dist=False)
        self.log("val_ndcg", results["val/ndcg@10"], prog_bar=True, logger=False, rank_zero_only=True)

    def _spread(self, val_sets) -> dict:
        """Spread of the held-out passages' embeddings; a warning when they have collapsed onto one direction."""
        from reasoning_embed.training.spread import embedding_spread, is_collapsed

        texts = [t for vs in val_sets for t in vs.corpus[:256]][:256]
        if len(texts) < 2:
            return {}
        self.last_spread = embedding_spread(self.encoder.encode(texts, None, self.hparams.eval_batch_size,
                                                                is_query=False))
        collapsed = is_collapsed(self.last_spread)
        if collapsed and not self.collapsed:
            log.warning("embeddings COLLAPSED at step %d: mean pairwise cosine %.3f, effective rank %.2f "
                        "(retrieval is at chance; lower the learning rate or raise the temperature)",
                        self.global_step, self.last_spread["mean_cosine"], self.last_spread["effective_rank"])
        self.collapsed = collapsed
        return {f"val/spread/{k}": v for k, v in self.last_spread.items()}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["initial_val"] = self.initial_val

    def on_load_checkpoint(self, checkpoint):
        self.initial_val = dict(checkpoint.get("initial_val", {}))

    def throughput(self) -> float:
        """Useful tokens per second over all steps (all ranks' tokens, synchronised step time)."""
        return self._tokens / self._step_time if self._step_time else 0.0
