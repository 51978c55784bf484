"""The HRSA run behind ``python -m reasoning_embed.hrsa``: load two models, extract, analyse, write.

``run_hrsa(cfg)`` takes the composed ``conf/hrsa.yaml`` and writes ``hrsa.json`` (atomically) and the
PNG figures to ``cfg.paths.output_dir``; it returns the report dict.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("reasoning_embed.hrsa")

HRSA_VERSION = 1


def _device(name: str):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model(spec: dict, corpus_dir: str | None) -> tuple[str, str, str]:
    """``(path, attention, why)``: what the one loader reads for this side (a tiny backbone is built on first
    use, a run directory means its export) and the attention mode it is read with."""
    from functools import partial

    from reasoning_embed.assets import materialize_backbone
    from reasoning_embed.models.loading import resolve_spec

    from .features import resolve_attention

    requested = spec.get("attention", "auto")
    spec = {k: v for k, v in spec.items() if k != "attention"}
    resolved = resolve_spec(spec, spec.get("revision"), build=partial(materialize_backbone, corpus_dir=corpus_dir))
    attention, why = resolve_attention(resolved.path, requested, resolved.revision)
    return resolved.path, attention, why


def load_model(spec: dict, *, corpus_dir: str | None, dtype: str = "float32", attn_implementation: str = "sdpa",
               device=None, resolved: tuple[str, str, str] | None = None) -> tuple[object, dict]:
    """The project's encoder for one side of the comparison (the one loader), read with its own attention mode."""
    from reasoning_embed.models.loading import load_encoder

    path, attention, why = resolved or resolve_model(spec, corpus_dir)
    enc = load_encoder({"path": path, "name": spec.get("name") or path, "revision": spec.get("revision")},
                       {"attention": attention, "dtype": dtype, "attn_implementation": attn_implementation})
    if device is not None:
        enc.to(device)
    enc.eval()
    cfg = enc.backbone.config
    info = {"name": spec.get("name"), "path": str(spec["path"]), "resolved_path": path,
            "revision": spec.get("revision"), "attention": attention, "attention_source": why,
            "hidden_size": cfg.hidden_size, "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
            "model_type": getattr(cfg, "model_type", None), "dtype": dtype,
            "tokenizer_vocab_size": len(enc.tokenizer.hf)}
    foundry = Path(path) / "foundry.json"
    if foundry.is_file():
        info["foundry"] = json.loads(foundry.read_text())
    return enc, info


def _resolved_config(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run
        return OmegaConf.to_container(cfg, resolve=False)


def run_hrsa(cfg) -> dict:
    import torch
    from omegaconf import OmegaConf, open_dict

    from reasoning_embed.utils.io import atomic_write_json

    from .analysis import analyze
    from .features import diagonal_pairs, extract_features
    from .texts import load_texts

    t_start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.out = str(output_dir)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))   # 1 by default: a shared small CPU thrashes with more
    torch.manual_seed(int(cfg.seed))
    device = _device(cfg.get("device", "auto"))
    corpus_dir = cfg.get("corpus_dir")

    texts = load_texts(cfg.texts, corpus_dir=corpus_dir, split=cfg.get("split"), text_field=cfg.text_field,
                       label_field=cfg.get("label_field"), pairs_use=cfg.pairs_use, n_texts=cfg.get("n_texts"),
                       seed=int(cfg.seed), dedupe=True)
    log.info("%d texts from %s (%s)", len(texts.texts), texts.source, texts.info)

    t = time.perf_counter()
    spec_a = OmegaConf.to_container(cfg.model_a, resolve=True)
    spec_b = OmegaConf.to_container(cfg.model_b, resolve=True)
    kw = dict(corpus_dir=corpus_dir, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation, device=device)
    res_a, res_b = resolve_model(spec_a, corpus_dir), resolve_model(spec_b, corpus_dir)
    enc_a, info_a = load_model(spec_a, resolved=res_a, **kw)
    if res_a == res_b and spec_a.get("revision") == spec_b.get("revision"):
        # the same weights read the same way: one model object serves both sides
        enc_b, info_b = enc_a, {**info_a, "name": spec_b.get("name"), "same_model_object_as_a": True}
    else:
        enc_b, info_b = load_model(spec_b, resolved=res_b, **kw)
    load_s = time.perf_counter() - t
    log.info("model_a %s (%s), model_b %s (%s)", info_a["name"], info_a["attention"], info_b["name"],
             info_b["attention"])

    compute_dtype = {"float64": torch.float64, "float32": torch.float32}[cfg.cka.compute_dtype]
    ext = extract_features(
        enc_a, enc_b, texts.texts, level=cfg.level, pooling=cfg.pooling, max_length=int(cfg.max_length),
        batch_size=int(cfg.batch_size), exclude_special_tokens=bool(cfg.exclude_special_tokens),
        exclude_first_token=bool(cfg.exclude_first_token),
        layers=list(cfg.layers) if cfg.get("layers") is not None else None, max_sample=int(cfg.max_sample),
        sample_tokens_per_text=cfg.get("sample_tokens_per_text"), dedupe_sample=bool(cfg.dedupe_sample),
        probe_layer=int(cfg.probe_layer), seed=int(cfg.seed), cka_debiased=bool(cfg.cka.debiased),
        cka_compute_dtype=compute_dtype, progress=bool(cfg.progress),
        names=(str(info_a["name"]), str(info_b["name"])), cache_dir=cfg.cache.get("dir"),
        cache_dtype=str(cfg.cache.dtype), memory_budget=cfg.get("memory_budget"), device=device,
        cka_route=str(cfg.cka.get("route", "auto")), cka_jackknife=bool(cfg.cka.get("jackknife", False)),
        alpha=float(cfg.stats.alpha))
    del enc_a, enc_b

    report, arrays = analyze(
        ext, texts.labels, knn_k=tuple(cfg.knn.k), knn_metric=cfg.knn.metric, knn_max_rows=int(cfg.knn.max_rows),
        procrustes_test_fraction=float(cfg.procrustes.test_fraction), dimcorr_pairs=cfg.dimcorr.pairs,
        stats_layers=cfg.stats.layers, stats_tokens_per_text=int(cfg.stats.tokens_per_text),
        stats_max_texts=int(cfg.stats.max_texts), n_boot=int(cfg.stats.n_boot), n_perm=int(cfg.stats.n_perm),
        alpha=float(cfg.stats.alpha), probe=OmegaConf.to_container(cfg.probe, resolve=True),
        massive_ratio=float(cfg.massive.ratio), seed=int(cfg.seed), progress=bool(cfg.progress),
        device=device, memory_budget=cfg.get("memory_budget"))

    warnings_ = report.pop("warnings")
    if texts.labels is None and cfg.get("label_field"):
        warnings_.append(f"no labels ({cfg.label_field!r}) on every text: probe skipped")
    c = ext.counts
    out = {
        "hrsa_version": HRSA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "output_dir": str(output_dir),
        "models": {"model_a": info_a, "model_b": info_b},
        "attention": {"model_a": info_a["attention"], "model_b": info_b["attention"]},
        "level": ext.level, "pooling": ext.pooling, "max_length": int(cfg.max_length),
        "exclusions": {"special_tokens": bool(cfg.exclude_special_tokens), "first_token": bool(cfg.exclude_first_token),
                       "padding": True},
        "texts": {"source": texts.source, **texts.info},
        "tokenizers": ext.tokenizers,
        "feature_cache": ext.cache,
        "n_texts": c["texts_used"], "n_tokens": c["tokens_kept"], "d": {"model_a": ext.d_a, "model_b": ext.d_b},
        "n": {**c, "knn_rows": report.get("knn", {}).get("n_rows"),
              "stats_rows": report.get("stats", {}).get("n_rows"),
              "procrustes_fit_rows": report.get("procrustes", {}).get("n_fit"),
              "procrustes_test_rows": report.get("procrustes", {}).get("n_test")},
        "layers": {"model_a": ext.layers_a, "model_b": ext.layers_b,
                   "note": "hidden-state indices: 0 = embedding output, i = output of block i",
                   "diagonal_pairs": [[ext.layers_a[i], ext.layers_b[j]]
                                      for i, j in diagonal_pairs(len(ext.layers_a), len(ext.layers_b))]},
        **{k: report[k] for k in ("cka", "knn", "procrustes", "dimcorr", "stats", "probe", "massive_activations")
           if k in report},
        "warnings": warnings_,
        "timing_s": {"load_models": round(load_s, 3), "extract": round(ext.seconds, 3), **report.get("timing_s", {})},
    }
    if cfg.get("figures", True):
        t = time.perf_counter()
        out["figures"] = write_figures_safe(out, arrays, output_dir, warnings_)
        out["timing_s"]["figures"] = round(time.perf_counter() - t, 3)
    out["timing_s"]["total"] = round(time.perf_counter() - t_start, 3)
    out["config"] = _resolved_config(cfg)
    atomic_write_json(output_dir / "hrsa.json", out)
    _log_summary(out)
    return out


def write_figures_safe(report, arrays, output_dir, warnings_) -> list[str]:
    from .figures import write_figures

    try:
        return write_figures(report, arrays, output_dir)
    except Exception as e:  # noqa: BLE001 - a figure must not cost the numbers
        log.exception("figures failed")
        warnings_.append(f"figures failed: {type(e).__name__}: {e}")
        return []


def _log_summary(out: dict) -> None:
    cka = out["cka"]
    last = len(cka["diagonal_biased"]) - 1
    knn = out.get("knn", {}).get("per_layer", [])
    jac = knn[-1].get("jaccard", {}) if knn else {}
    log.info("last layer: CKA biased %.4f, debiased %s; k-NN Jaccard %s", cka["diagonal_biased"][last] or float("nan"),
             (cka["diagonal_debiased"] or [None] * (last + 1))[last], {k: round(v, 4) for k, v in jac.items()})
    probe = out.get("probe", {})
    if "native" in probe:
        log.info("probe (%s): native %.3f raw %s aligned %.3f B-own %.3f chance %.3f", probe["metric"],
                 probe["native"], probe["raw_transfer"], probe["aligned_transfer"], probe["b_own"], probe["chance"])
    log.info("wrote %s/hrsa.json (%d figures) in %.1f s", out["output_dir"], len(out.get("figures", [])),
             out["timing_s"]["total"])
