"""Manifold realignment, live: HRSA of the model being trained against its own start and a reference.

At step 0, every ``every_n_steps`` steps, at every checkpoint save and at the end of training, the probe
texts are embedded (eval mode, no grad) and compared with the step-0 embeddings of the same run
(``*_vs_init``) and, when configured, with a reference (``*_vs_ref``): the partner run's saved probe
embeddings at the same step (``reference_run``) or a fixed model (``reference_model``).

Writes ``<run_dir>/hrsa/features/step_<N>.safetensors`` and ``<run_dir>/hrsa/realignment.jsonl`` (one JSON
object per evaluation, rewritten atomically), and logs the series to every logger, on rank 0 only.
Under DDP every rank embeds its share of the probe rows and rank 0 reassembles them in order; under FSDP
every rank embeds every row (each forward gathers parameters, so all ranks must make the same calls).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from reasoning_embed.utils.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


def load_probe_texts(path: str | None, val_sets, n_probe: int, train_rows=None) -> tuple[list[str], list[str | None]]:
    """Probe texts and their instructions: a file (JSONL training format, or one text per line), or by
    default a held-out slice of the validation sets: half queries (with instructions), half passages.
    Without validation sets, the first training rows stand in (logged: they are not held out)."""
    texts, instructions = [], []
    if path:
        texts, instructions = read_probe_file(path)
        return texts[:n_probe], instructions[:n_probe]
    if not val_sets and train_rows:
        log.warning("HRSA probe set: no held-out data (data.val is empty), using the first %d training rows; "
                    "set callbacks.hrsa.probe_file for a held-out probe set", n_probe // 2)
        for row in train_rows[: -(-n_probe // 2)]:
            texts += [row.query, row.pos[0]]
            instructions += [row.instruction or None, None]
        return texts[:n_probe], instructions[:n_probe]
    if not val_sets:
        raise ValueError("HRSACallback needs probe texts: set callbacks.hrsa.probe_file or give data.val")
    per_set = -(-n_probe // (2 * len(val_sets)))  # ceil, then truncated to exactly n_probe below
    for vs in val_sets:
        texts += vs.queries[:per_set]
        instructions += vs.instructions[:per_set]
        texts += vs.corpus[:per_set]
        instructions += [None] * min(per_set, len(vs.corpus))
    return texts[:n_probe], instructions[:n_probe]


def read_probe_file(path: str | Path) -> tuple[list[str], list[str | None]]:
    """Texts and instructions of a probe file: JSONL rows in the training format (the query with its
    instruction, then the first positive) or ``{"text": ...}``, or else one text per line. A malformed row
    stops with file, line and key."""
    from reasoning_embed.data.jsonl import iter_json_lines, parse_row, text_lines
    from reasoning_embed.errors import DataFormatError

    p = Path(path)
    texts, instructions = [], []
    if p.suffix != ".jsonl":
        if not p.is_file():
            raise DataFormatError(p, None, None, "file not found")
        for _, line in text_lines(p):
            if line.strip():
                texts.append(line.rstrip("\n"))
                instructions.append(None)
        return texts, instructions
    for lineno, obj in iter_json_lines(p, hint='expected a training row or {"text": ...}'):
        if "query" in obj:
            row = parse_row(obj, p, lineno)
            texts += [row.query, row.pos[0]]
            instructions += [row.instruction or None, None]
        elif isinstance(obj.get("text"), str) and obj["text"].strip():
            texts.append(obj["text"])
            instructions.append(None)
        else:
            raise DataFormatError(p, lineno, "text", "missing or not a non-empty string; expected "
                                  '{"text": ...} or a training row {"query": [instruction, text], "pos": [...]}')
    return texts, instructions


def save_features(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(tmp), metadata={"step": str(step)})


def load_features(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def compare(current: torch.Tensor, other: torch.Tensor, k: int, n_perm: int = 0, seed: int = 0) -> dict[str, float]:
    """CKA (biased, debiased) and k-NN Jaccard of two probe embeddings; with ``n_perm`` > 0 also their
    null-calibrated values (``*_cal``: probe texts re-paired ``n_perm`` times, ``max(0, (s - tau) / (1 - tau))``)
    and the thresholds (``*_tau``)."""
    from reasoning_embed.hrsa import knn_jaccard, linear_cka

    kk = min(k, current.shape[0] - 1)
    out = {
        "cka": linear_cka(current, other),
        "cka_debiased": linear_cka(current, other, debiased=True) if current.shape[0] > 3 else float("nan"),
        f"knn{k}": knn_jaccard(current, other, k=(kk,)).jaccard[kk],
    }
    if n_perm > 0 and current.shape[0] > 3:
        import warnings

        from reasoning_embed.hrsa.calibration import calibrate_null
        from reasoning_embed.hrsa.fast_stats import knn_permutation_test
        from reasoning_embed.hrsa.stats import cka_permutation_test

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pc = cka_permutation_test(current, other, n_perm=n_perm, seed=seed)
            pk = knn_permutation_test(current, other, k=(kk,), n_perm=n_perm, seed=seed)[kk]
        for name, p in (("cka", pc), (f"knn{k}", pk)):
            cal = calibrate_null(p.observed, p.null)
            out[f"{name}_cal"], out[f"{name}_tau"] = cal.score, cal.tau
    return out


class HRSACallback(L.Callback):
    def __init__(self, every_n_steps: int = 50, n_probe: int = 256, k: int = 10, layerwise: bool = False,
                 probe_file: str | None = None, reference_run: str | None = None,
                 reference_model: str | None = None, batch_size: int = 64, save_features: bool = True,
                 out_dir: str | None = None, enabled: bool = True, n_perm: int = 50):
        self.every_n_steps, self.n_probe, self.k, self.layerwise = every_n_steps, n_probe, k, layerwise
        self.probe_file, self.reference_run, self.reference_model = probe_file, reference_run, reference_model
        self.batch_size, self.save, self.out_dir, self.enabled = batch_size, save_features, out_dir, enabled
        self.n_perm = n_perm           # permutations for the calibrated CKA / k-NN of each record (0: off)
        self.texts: list[str] = []
        self.instructions: list[str | None] = []
        self.init: dict[str, torch.Tensor] | None = None
        self.ref_fixed: torch.Tensor | None = None
        self.records: list[dict] = []
        self._done_steps: set[int] = set()
        self.seconds = 0.0

    # -------------------------------------------------------------------- setup
    def _dir(self, trainer) -> Path:
        return Path(self.out_dir or trainer.default_root_dir) / "hrsa"

    def setup(self, trainer, pl_module, stage):
        if not self.enabled or self.texts:
            return
        dm = trainer.datamodule
        if dm is not None and not getattr(dm, "val_sets", None) and dm.val_path:
            dm.setup(stage)
        dataset = getattr(dm, "dataset", None)
        self.texts, self.instructions = load_probe_texts(self.probe_file, getattr(dm, "val_sets", []), self.n_probe,
                                                         dataset.rows if dataset is not None else None)
        jsonl = self._dir(trainer) / "realignment.jsonl"
        if jsonl.exists():  # resuming: keep the history, reload step-0 features
            from reasoning_embed.data.jsonl import iter_json_lines

            self.records = [obj for _, obj in iter_json_lines(jsonl)]
            self._done_steps = {r["step"] for r in self.records}
            init_path = self._dir(trainer) / "features" / "step_0.safetensors"
            if init_path.exists():
                self.init = load_features(init_path)

    # -------------------------------------------------------------------- embedding (sharded across ranks)
    @torch.no_grad()
    def _embed(self, trainer, pl_module) -> dict[str, torch.Tensor]:
        from reasoning_embed.training.strategies import is_sharded

        encoder = pl_module.encoder
        world, rank = trainer.world_size, trainer.global_rank
        if is_sharded(encoder):  # FSDP: each forward is a collective, so every rank embeds every row, in step
            world, rank = 1, 0
        idx = list(range(rank, len(self.texts), world))
        local = {"embeddings": self._encode_rows(encoder, idx)}
        if self.layerwise:
            local.update(self._layer_rows(encoder, idx))
        if world == 1:
            return local
        out = {}
        per_rank = (len(self.texts) + world - 1) // world
        for name, t in local.items():
            padded = torch.zeros(per_rank, t.shape[1], device=pl_module.device, dtype=torch.float32)
            padded[: t.shape[0]] = t.to(pl_module.device)
            gathered = pl_module.all_gather(padded).cpu()  # world x per_rank x d
            full = torch.empty(len(self.texts), t.shape[1])
            for r in range(world):
                rows = list(range(r, len(self.texts), world))
                full[rows] = gathered[r, : len(rows)]
            out[name] = full
        return out

    def _encode_rows(self, encoder, idx):
        if not idx:
            return torch.zeros(0, encoder.dim)
        texts = [self.texts[i] for i in idx]
        q = [i for i, j in enumerate(idx) if self.instructions[j]]
        p = [i for i, j in enumerate(idx) if not self.instructions[j]]
        out = torch.empty(len(idx), encoder.dim)
        if q:
            out[q] = encoder.encode([texts[i] for i in q], [self.instructions[idx[i]] for i in q], self.batch_size)
        if p:
            out[p] = encoder.encode([texts[i] for i in p], None, self.batch_size, is_query=False)
        return out

    def _layer_rows(self, encoder, idx):
        """Mean-pooled hidden state of every layer (embedding output + each block) per probe text."""
        from reasoning_embed.models.encode import encode_layers

        return encode_layers(encoder, [self.texts[i] for i in idx], self.batch_size)

    # -------------------------------------------------------------------- evaluation
    def _reference_at(self, step: int) -> torch.Tensor | None:
        if self.ref_fixed is not None:
            return self.ref_fixed
        if self.reference_run:
            path = Path(self.reference_run) / "hrsa" / "features" / f"step_{step}.safetensors"
            if path.exists():
                return load_features(path)["embeddings"]
        return None

    def evaluate(self, trainer, pl_module) -> dict | None:
        import time

        step = int(trainer.global_step)
        if not self.enabled or step in self._done_steps:
            return None
        start = time.perf_counter()
        feats = self._embed(trainer, pl_module)  # every rank participates
        self._done_steps.add(step)
        if not trainer.is_global_zero:
            return None
        if self.init is None:
            self.init = feats
        emb = feats["embeddings"]
        record: dict = {"step": step, "n_probe": emb.shape[0]}
        for name, value in compare(emb, self.init["embeddings"], self.k, self.n_perm).items():
            record[f"{name}_vs_init"] = value
        ref = self._reference_at(step)
        if ref is not None and ref.shape[0] == emb.shape[0]:
            for name, value in compare(emb, ref, self.k, self.n_perm).items():
                record[f"{name}_vs_ref"] = value
        if self.layerwise:
            from reasoning_embed.hrsa import linear_cka

            for name in sorted(k for k in feats if k.startswith("layer_")):
                record[f"cka_{name}_vs_init"] = linear_cka(feats[name], self.init[name])
        d = self._dir(trainer)
        if self.save:
            save_features(d / "features" / f"step_{step}.safetensors", feats, step)
        self.records.append(record)
        atomic_write_text(d / "realignment.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        for lg in trainer.loggers:
            lg.log_metrics({f"hrsa/{k}": v for k, v in record.items() if k not in ("step", "n_probe")}, step=step)
        self.seconds += time.perf_counter() - start
        return record

    # -------------------------------------------------------------------- resume: the step-0 baseline travels
    def state_dict(self) -> dict:
        """In every checkpoint: the step-0 embeddings (whatever ``save_features`` says), so a resumed run keeps
        comparing with its true start, not with the first evaluation after the restart."""
        return {"init": self.init} if self.init is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("init") is not None:
            self.init = {k: v.cpu() for k, v in state_dict["init"].items()}

    def on_train_start(self, trainer, pl_module):
        if not self.enabled:
            return
        if self.reference_model and self.ref_fixed is None:
            from reasoning_embed.assets import load_encoder

            # the one loader: a run directory, an export, an HF dir or hub id, a config name, minilm
            ref = load_encoder(self.reference_model, device=pl_module.device).eval()
            self.ref_fixed = self._encode_rows(ref, list(range(len(self.texts))))
        self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.training:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.evaluate(trainer, pl_module)
        if trainer.is_global_zero and self.records:
            log.info("HRSA at step %d: cka_vs_init %.4f, knn%d_vs_init %.4f (%.1f s in the callback)",
                     self.records[-1]["step"], self.records[-1]["cka_vs_init"], self.k,
                     self.records[-1][f"knn{self.k}_vs_init"], self.seconds)
