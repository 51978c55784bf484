"""HRSA of the backbones themselves in a report: each reasoning/SFT backbone against its base."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from reasoning_embed.utils.fmt import fmt_number

__all__ = ["backbone_hrsa", "backbone_specs", "render_hrsa_markdown", "summarize_hrsa"]

log = logging.getLogger("reasoning_embed.report")


def backbone_specs(dirs: list[Path]) -> dict[str, dict]:
    """Each backbone of the sweep as its runs resolved it (first run wins), by name: the directory a run
    recorded it trained from (``metrics.json``'s ``backbone_path``) where it still exists, so that a tiny
    backbone is the triple the runs used, not one rebuilt from its config under a newer cache key."""
    specs = {}
    for run in dirs:
        cfg_path = run / ".hydra" / "config.yaml"
        try:
            spec = OmegaConf.to_container(OmegaConf.load(cfg_path).backbone, resolve=True)
        except Exception as e:  # noqa: BLE001 - an unresolvable config is reported, not fatal
            log.warning("%s: backbone config not readable for the HRSA summary: %s", cfg_path, e)
            continue
        name = str(spec.get("name"))
        if name in specs:
            continue
        recorded = _recorded_path(run)
        if recorded and Path(recorded).is_dir():
            spec = {**spec, "path": recorded, "tiny": None}
        elif recorded and spec.get("tiny"):
            log.warning("%s: the backbone it trained from (%s) is gone; the HRSA summary builds %s from its config, "
                        "which may not be the same weights", run, recorded, name)
        specs[name] = spec
    return specs


def _recorded_path(run: Path) -> str | None:
    from reasoning_embed.report.runs import read_metrics

    try:
        return read_metrics(run).get("backbone_path")
    except (OSError, ValueError):  # unreadable metrics: the config is all there is
        return None


def _compose_hrsa(args: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="hrsa", overrides=args)
    from reasoning_embed import CONF_DIR as conf

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="hrsa", overrides=args)


def backbone_hrsa(dirs: list[Path], out: Path, overrides: list[str] | None = None) -> list[dict]:
    """HRSA of the backbones themselves, each reasoning/SFT backbone against its base (both read causally,
    as pre-trained), at the last layer: CKA (biased, debiased, with interval, permutation p and the
    null-calibrated score), k-NN Jaccard (k=10), held-out Procrustes and cross-model probe transfer. Full
    output in ``<out>/hrsa/<base>__vs__<backbone>/hrsa.json``."""
    from omegaconf import open_dict

    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.hrsa.pipeline import run_hrsa

    specs = backbone_specs(dirs)
    results = []
    for name, spec in sorted(specs.items()):
        base = str(spec.get("base"))
        if base in ("None", name):
            continue
        entry = {"backbone": name, "base": base}
        if base not in specs:
            results.append({**entry, "note": f"base backbone {base!r} is not in these runs"})
            continue
        d = out / "hrsa" / f"{base}__vs__{name}"
        hcfg = _compose_hrsa([f"paths.output_dir={d}", "layers=[-1]", "progress=false", "dimcorr.pairs=diagonal",
                              "stats.n_boot=100", "stats.n_perm=100", *(overrides or [])])
        with open_dict(hcfg):
            hcfg.model_a = {**specs[base], "attention": "causal"}
            hcfg.model_b = {**spec, "attention": "causal"}
        try:
            rep = run_hrsa(hcfg)
        except (ReasoningEmbedError, OSError, ValueError) as e:
            log.warning("backbone HRSA %s vs %s failed: %s", base, name, e)
            results.append({**entry, "note": f"HRSA failed: {e}"})
            continue
        results.append({**entry, **summarize_hrsa(rep), "hrsa_json": str(d / "hrsa.json")})
    return results


def _stats_summary(rep: dict) -> dict:
    out: dict = {}
    stats = (rep.get("stats") or {}).get("per_layer") or []
    if not stats:
        return out
    last = stats[-1]
    c = last.get("cka", {}).get("biased", {})
    deb = last.get("cka", {}).get("debiased", {})
    # the interval belongs to the stats sample's estimate, and targets the population CKA (debiased: biased CKA
    # is inflated by d/n, and its own interval only covers its expected value at this sample size)
    out["cka_debiased_stats"] = deb.get("estimate")
    out["cka_debiased_ci"] = [deb.get("low"), deb.get("high")]
    out["stats_rows"] = last.get("n_rows")
    out["cka_p"] = c.get("p_value")
    out["cka_calibrated"] = (c.get("calibrated") or {}).get("score")
    out["cka_tau"] = (c.get("calibrated") or {}).get("tau")
    k10 = last.get("knn_jaccard", {}).get("10", {})
    out["knn10_calibrated"] = (k10.get("calibrated") or {}).get("score")
    return out


def summarize_hrsa(rep: dict) -> dict:
    """The last-layer headline numbers of one hrsa.json (raw and null-calibrated)."""
    out: dict = {"n_texts": rep.get("n_texts"), "n_tokens": rep.get("n_tokens"), "level": rep.get("level")}
    out["cka"] = rep["cka"]["diagonal_biased"][-1]
    out["cka_debiased"] = (rep["cka"].get("diagonal_debiased") or [None])[-1]
    out.update(_stats_summary(rep))
    knn = (rep.get("knn") or {}).get("per_layer") or []
    if knn and "jaccard" in knn[-1]:
        out["knn10"] = knn[-1]["jaccard"].get("10")
        out["knn10_chance"] = knn[-1]["chance_jaccard"].get("10")
    proc = (rep.get("procrustes") or {}).get("per_layer") or []
    if proc and "cosine_test" in proc[-1]:
        out["procrustes_cosine_test"] = proc[-1]["cosine_test"]
        out["procrustes_rvr_test"] = proc[-1]["rvr_test"]
    probe = rep.get("probe") or {}
    if "skipped" in probe:
        out["probe"] = {"skipped": probe["skipped"]}
    elif probe:
        out["probe"] = {k: probe.get(k) for k in ("native", "raw_transfer", "aligned_transfer", "b_own", "chance",
                                                  "n_test", "warning")}
    return out


def render_hrsa_markdown(results: list[dict]) -> str:
    if not results:
        return ""
    lines = ["", "## The backbones themselves: HRSA at the last layer (base vs reasoning / SFT, causal reading)", "",
             "Calibrated = max(0, (s - tau) / (1 - tau)), tau the 95% permutation-null threshold (texts re-paired): "
             "0 means indistinguishable from unrelated representations of the same width and sample.", "",
             "CKA and k-NN are on every kept row; the debiased CKA's 95% interval (for the population CKA) and the "
             "p-values are on the stats sample (rows in brackets).", "",
             "| backbone | base | CKA | CKA calibrated (tau) | CKA p (perm.) | debiased CKA, stats sample (95% CI) "
             "| k-NN@10 Jaccard (chance) | k-NN@10 calibrated | Procrustes held-out cos "
             "| probe native / raw / aligned / B own / chance (n test) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "note" in r:
            lines.append(f"| {r['backbone']} | {r['base']} | {r['note']} | | | | | | | |")
            continue
        ci = r.get("cka_debiased_ci") or [None, None]
        pr = r.get("probe") or {}
        probe = (pr["skipped"] if "skipped" in pr else
                 " / ".join(fmt_number(pr.get(k), ".2f") for k in ("native", "raw_transfer", "aligned_transfer",
                                                                   "b_own", "chance")) + f" ({pr.get('n_test', 'n/a')})"
                 + (f" ⚠ {pr['warning']}" if pr.get("warning") else ""))
        lines.append(f"| {r['backbone']} | {r['base']} | {fmt_number(r['cka'])} "
                     f"| {fmt_number(r.get('cka_calibrated'))} ({fmt_number(r.get('cka_tau'))}) "
                     f"| {fmt_number(r.get('cka_p'), '.3g')} | {fmt_number(r.get('cka_debiased_stats'))} "
                     f"({fmt_number(ci[0])}, {fmt_number(ci[1])}) [{r.get('stats_rows', 'n/a')}] "
                     f"| {fmt_number(r.get('knn10'))} ({fmt_number(r.get('knn10_chance'))}) "
                     f"| {fmt_number(r.get('knn10_calibrated'))} "
                     f"| {fmt_number(r.get('procrustes_cosine_test'))} | {probe} |")
    lines.append("")
    lines.append("Full per-layer results: `hrsa/<base>__vs__<backbone>/hrsa.json`.")
    return "\n".join(lines) + "\n"
