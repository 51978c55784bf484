"""LightningDataModule: training mixture (one source per batch) and held-out retrieval sets."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import lightning as L
from torch.utils.data import DataLoader

from reasoning_embed.data.contrastive import (
    ContrastiveCollator,
    ContrastiveDataset,
    MixtureBatchSampler,
    ResumableLoader,
    apply_no_negative_policy,
)
from reasoning_embed.data.jsonl import data_files, read_jsonl
from reasoning_embed.retrieval import retrieval_set_from_rows

log = logging.getLogger(__name__)


class ContrastiveDataModule(L.LightningDataModule):
    def __init__(self, train: str, val: str | None = None, batch_size: int = 32, num_negatives: int = 3,
                 no_negative_policy: str = "drop", bad_rows: str = "error", val_max_queries: int | None = 500,
                 num_workers: int = 0, seed: int = 0, offline_corpus: str | None = None,
                 mine_reference: str | None = None, mine_max_length: int | None = 256,
                 report_dir: str | None = None, prepare: Callable | None = None,
                 file_weights: dict[str, float] | None = None):
        super().__init__()
        self.train_path, self.val_path = train, val
        self.batch_size, self.num_negatives = batch_size, num_negatives
        self.no_negative_policy, self.bad_rows = no_negative_policy, bad_rows
        self.val_max_queries, self.num_workers, self.seed = val_max_queries, num_workers, seed
        self.offline_corpus, self.report_dir = offline_corpus, report_dir
        self.mine_reference = mine_reference  # mine the offline corpus's negatives with this model first
        self.mine_max_length = mine_max_length
        # prepare(offline_corpus, mine_reference, mine_max_length) -> (train dir, val dir): given by the config
        # (reasoning_embed.assets.prepare_offline_corpus), so that this layer builds and mines nothing itself
        self.prepare = prepare
        self.file_weights = dict(file_weights or {})  # {training file's stem: share of an epoch}, default 1
        self.tokenizer = None  # TextTokenizer, set by the training entry point
        self.dataset = self.sampler = None
        self.val_sets = []
        self.data_report: dict = {}
        self.preread: dict = {}  # {path: (rows, report)} read by the entry point's input validation

    def prepare_data(self):
        """Build (and mine) the offline corpus through the injected ``prepare``; a train or val path left
        unset (null) is the prepared corpus' split. Every DDP rank calls this; ``prepare`` locks."""
        if not self.offline_corpus:
            return
        if self.prepare is None:
            raise ValueError("ContrastiveDataModule(offline_corpus=...) needs prepare= (the builder, e.g. "
                             "reasoning_embed.assets.prepare_offline_corpus; data/offline.yaml sets it)")
        train, val = self.prepare(self.offline_corpus, self.mine_reference, self.mine_max_length)
        self.train_path = self.train_path or train
        self.val_path = self.val_path or val

    def _read(self, path):
        # files the entry point already read and validated before building the model are not parsed again
        rows, report = self.preread.pop(str(path), None) or read_jsonl(path, self.bad_rows)
        if report.skipped:
            log.warning("%s: skipped %d malformed rows (bad_rows=skip); first: %s", path, report.skipped,
                        report.errors[0])
        return rows, report

    def setup(self, stage: str | None = None):
        if self.dataset is not None:
            return
        self.prepare_data()
        files_rows, report = [], {"train": {}, "val": {}}
        for path in data_files(self.train_path):
            rows, r = self._read(path)
            rows, dropped = apply_no_negative_policy(rows, self.no_negative_policy, path)
            report["train"][str(path)] = {"rows": len(rows), "skipped_malformed": r.skipped,
                                          "dropped_no_negative": dropped, "skipped_examples": r.errors[:5]}
            files_rows.append(rows)
        self.dataset = ContrastiveDataset(files_rows, self.num_negatives, self.seed)
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        weights = self._weights_of([Path(p).stem for p in report["train"]])
        for r, w in zip(report["train"].values(), weights):
            r["weight"] = w
        self.sampler = MixtureBatchSampler(self.dataset.file_sizes, self.batch_size, world, rank, self.seed,
                                           file_weights=weights)
        if self.val_path:
            for path in data_files(self.val_path):
                rows, r = self._read(path)
                self.val_sets.append(retrieval_set_from_rows(Path(path).stem, rows, self.val_max_queries, self.seed))
                report["val"][str(path)] = {"rows": len(rows), "skipped_malformed": r.skipped,
                                            "queries": len(self.val_sets[-1].queries),
                                            "corpus": len(self.val_sets[-1].corpus)}
        self.data_report = report
        if self.report_dir:
            from reasoning_embed.utils.io import atomic_write_json

            atomic_write_json(Path(self.report_dir) / "data_report.json", report)

    def _weights_of(self, stems: list[str]) -> list[float]:
        """``data.file_weights`` as one weight per training file (by file stem, as the validation sets are named)."""
        from reasoning_embed.errors import ConfigValueError

        unknown = sorted(set(self.file_weights) - set(stems))
        if unknown:
            raise ConfigValueError(f"data.file_weights names {unknown}, which are not training files; the training "
                                   f"files are {sorted(stems)} (keys are file names without .jsonl)")
        weights = []
        for stem in stems:
            w = self.file_weights.get(stem, 1.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
                raise ConfigValueError(f"data.file_weights.{stem}: expected a finite number >= 0 (its share of an "
                                       f"epoch, 1 = as many rows as the file has), got {w!r}")
            weights.append(float(w))
        return weights

    def train_dataloader(self):
        if self.tokenizer is None:
            raise RuntimeError("ContrastiveDataModule.tokenizer must be set (the encoder's TextTokenizer)")
        return ResumableLoader(self.dataset, batch_sampler=self.sampler, collate_fn=ContrastiveCollator(self.tokenizer),
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               consumed=self._batches_consumed)

    def _batches_consumed(self) -> int:
        # batches of the current epoch whose step ran (the loader itself reads ahead of the training loop)
        trainer = self.trainer
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0

    def val_dataloader(self):
        # Validation is retrieval over whole held-out sets, done in the module's validation hook; Lightning
        # only needs one dummy batch to trigger it.
        return DataLoader([0], batch_size=1)

    def summary(self) -> str:
        return json.dumps({k: {Path(p).name: v["rows"] for p, v in d.items()} for k, d in self.data_report.items()})
