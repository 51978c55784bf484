"""``python -m reasoning_embed.report sweep=DIR`` (or ``runs=[DIR,...]``): the study's table and figures.

Reads every run directory (``.hydra/config.yaml`` + ``metrics.json``; a run with ``failed.json`` or without
metrics is listed as failed) and writes ``<out>/table.md``, ``table.csv`` and ``report.json``: per backbone x
finetune mode the mean +- std over seeds of every score (held-out validation from training, and every
evaluated benchmark: Mean(Task), Mean(Type), per task type); for each reasoning/SFT backbone the delta
against its base, paired over (seed, task), with a paired bootstrap CI, Wilcoxon and sign-flip permutation
p-values and a verdict at ``alpha``. Then the realignment curves of each pair and (``hrsa=true``, the default)
the HRSA summary of the backbones themselves: each reasoning/SFT backbone against its base at the last layer.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from reasoning_embed.utils.hydra_utils import quiet_environment, user_errors_exit

log = logging.getLogger("reasoning_embed.report")


def _tasks(summary: dict) -> dict[str, dict]:
    """The evaluation summary's tasks as {name: {"score", "type"}} (it may hold a list of records)."""
    tasks = summary.get("tasks", {})
    if isinstance(tasks, list):
        return {t["task"]: t for t in tasks}
    return {t: (v if isinstance(v, dict) else {"score": v}) for t, v in tasks.items()}


def _task_scores(metrics: dict) -> dict[str, dict[str, float]]:
    """benchmark -> {task: score x100}: the held-out validation sets, then every evaluated benchmark."""
    out: dict[str, dict[str, float]] = {}
    val = {k.split("/")[1]: 100 * v for k, v in metrics.get("final_val", {}).items()
           if k.count("/") == 2 and k.endswith("/ndcg@10")}
    if val:
        out["val_ndcg@10"] = val
    for bench, summary in (metrics.get("eval") or {}).items():
        out[bench] = {t: v["score"] for t, v in _tasks(summary).items() if v.get("score") is not None}
    return out


def _task_types(metrics: dict) -> dict[str, dict[str, str]]:
    out = {}
    for bench, summary in (metrics.get("eval") or {}).items():
        out[bench] = {t: v.get("type", "task") for t, v in _tasks(summary).items()}
    return out


def collect_runs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    runs, failed = [], []
    for run in paths:
        cfg_path = run / ".hydra" / "config.yaml"
        if not cfg_path.exists():
            continue
        cfg = OmegaConf.load(cfg_path)
        info = {
            "dir": str(run), "backbone": str(OmegaConf.select(cfg, "backbone.name")),
            "base": str(OmegaConf.select(cfg, "backbone.base")), "role": str(OmegaConf.select(cfg, "backbone.role")),
            "finetune": str(OmegaConf.select(cfg, "finetune.mode")), "seed": OmegaConf.select(cfg, "seed"),
        }
        if (run / "failed.json").exists() or not (run / "metrics.json").exists():
            reason = (json.loads((run / "failed.json").read_text())["error"] if (run / "failed.json").exists()
                      else "no metrics.json (killed, or still running)")
            failed.append({**info, "reason": reason})
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        info["scores"] = _task_scores(metrics)
        info["types"] = _task_types(metrics)
        runs.append(info)
    return runs, failed


def _aggregates(run: dict) -> dict[str, float]:
    """Per run: benchmark/Mean(Task), benchmark/Mean(Type), benchmark/type:T."""
    import numpy as np

    out = {}
    for bench, tasks in run["scores"].items():
        if not tasks:
            continue
        out[f"{bench}/Mean(Task)"] = float(np.mean(list(tasks.values())))
        types = run["types"].get(bench, {})
        by_type = defaultdict(list)
        for t, v in tasks.items():
            by_type[types.get(t, "task")].append(v)
        type_means = {ty: float(np.mean(v)) for ty, v in by_type.items()}
        out[f"{bench}/Mean(Type)"] = float(np.mean(list(type_means.values())))
        if len(type_means) > 1:
            for ty, v in type_means.items():
                out[f"{bench}/type:{ty}"] = v
    return out


def build_table(runs: list[dict], alpha: float = 0.05, n_boot: int = 10000) -> dict:
    import numpy as np

    from reasoning_embed.report.stats import compare_paired

    groups = defaultdict(list)
    for r in runs:
        groups[(r["backbone"], r["finetune"])].append(r)
    columns = sorted({k for r in runs for k in _aggregates(r)})
    rows = []
    for (backbone, finetune), rs in sorted(groups.items()):
        cells = {}
        for col in columns:
            vals = [a[col] for a in map(_aggregates, rs) if col in a]
            if not vals:
                cells[col] = {"text": "n/a (not evaluated)"}
                continue
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            text = f"{np.mean(vals):.2f} ± {std:.2f}" if len(vals) > 1 else f"{vals[0]:.2f} (1 seed, no std)"
            cells[col] = {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "text": text}
        rows.append({"backbone": backbone, "finetune": finetune, "seeds": sorted(r["seed"] for r in rs),
                     "role": rs[0]["role"], "base": rs[0]["base"], "cells": cells})
    deltas = []
    for (backbone, finetune), rs in sorted(groups.items()):
        base = rs[0]["base"]
        if base in (None, "None", backbone) or (base, finetune) not in groups:
            continue
        base_runs = {r["seed"]: r for r in groups[(base, finetune)]}
        for bench in sorted({b for r in rs for b in r["scores"]}):
            pairs = []
            for r in rs:
                b = base_runs.get(r["seed"])
                if b is None or bench not in b["scores"]:
                    continue
                for task, v in r["scores"][bench].items():
                    if task in b["scores"][bench]:
                        pairs.append({"seed": r["seed"], "task": task, "delta": v - b["scores"][bench][task]})
            if not pairs:
                deltas.append({"backbone": backbone, "base": base, "finetune": finetune, "benchmark": bench,
                               "note": "no paired (seed, task) observations"})
                continue
            cmp = compare_paired([p["delta"] for p in pairs], alpha, n_boot)
            deltas.append({"backbone": backbone, "base": base, "finetune": finetune, "benchmark": bench,
                           **cmp.__dict__, "pairs": pairs})
    return {"columns": columns, "rows": rows, "deltas": deltas, "alpha": alpha}


def render_markdown(table: dict, failed: list[dict], backbone_hrsa_results: list[dict] | None = None) -> str:
    cols = table["columns"]
    lines = ["# Study report", "", "## Scores (x100), mean ± std over seeds", "",
             "| backbone | finetune | seeds | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in table["rows"]:
        lines.append(f"| {r['backbone']} | {r['finetune']} | {','.join(map(str, r['seeds']))} | "
                     + " | ".join(r["cells"][c]["text"] for c in cols) + " |")
    lines += ["", f"## Delta against the base (paired over seeds x tasks; alpha = {table['alpha']})", "",
              "| backbone | base | finetune | benchmark | n pairs | mean delta | 95% CI | p (Wilcoxon) | p (sign-flip) | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for d in table["deltas"]:
        if "note" in d:
            lines.append(f"| {d['backbone']} | {d['base']} | {d['finetune']} | {d['benchmark']} | 0 | "
                         f"{d['note']} | | | | |")
            continue
        lines.append(f"| {d['backbone']} | {d['base']} | {d['finetune']} | {d['benchmark']} | {d['n']} | "
                     f"{d['mean_delta']:+.2f} | [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {d['p_wilcoxon']:.3g} | "
                     f"{d['p_permutation']:.3g} | {d['verdict']} |")
    lines += ["", "## Failed jobs", ""]
    lines += [f"- `{f['dir']}` ({f['backbone']}, {f['finetune']}, seed {f['seed']}): {f['reason']}" for f in failed] or ["none"]
    return "\n".join(lines) + "\n" + render_hrsa_markdown(backbone_hrsa_results or [])


def render_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backbone", "finetune", "seeds"] + [f"{c} mean" for c in table["columns"]]
               + [f"{c} std" for c in table["columns"]])
    for r in table["rows"]:
        w.writerow([r["backbone"], r["finetune"], " ".join(map(str, r["seeds"]))]
                   + [r["cells"][c].get("mean", "") for c in table["columns"]]
                   + [r["cells"][c].get("std", "") for c in table["columns"]])
    return buf.getvalue()


def run_dirs(cfg) -> list[Path]:
    if cfg.get("runs"):
        return [Path(p) for p in cfg.runs]
    sweep = Path(cfg.sweep)
    return sorted(p.parent.parent for p in sweep.glob("**/.hydra/config.yaml") if "report" not in p.parts)


def make_report(cfg) -> dict:
    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.utils.io import atomic_write_json, atomic_write_text

    if not cfg.get("sweep") and not cfg.get("runs"):
        raise ReasoningEmbedError("give sweep=DIR (a multirun directory) or runs=[DIR,...]")
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.sweep or ".") / "report"
    dirs = run_dirs(cfg)
    runs, failed = collect_runs(dirs)
    if not runs and not failed:
        raise ReasoningEmbedError(f"no run directories (with .hydra/config.yaml) under {cfg.get('sweep') or cfg.runs}")
    table = build_table(runs, cfg.alpha, cfg.n_boot)
    report = {"table": table, "failed": failed, "runs": [r["dir"] for r in runs]}
    if cfg.get("realign", True) and cfg.get("sweep"):
        report["realignment"] = _realignment(Path(cfg.sweep), out)
    if cfg.get("hrsa", True):
        report["backbone_hrsa"] = backbone_hrsa(dirs, out, [str(x) for x in (cfg.get("hrsa_overrides") or [])])
    atomic_write_text(out / "table.md", render_markdown(table, failed, report.get("backbone_hrsa")))
    atomic_write_text(out / "table.csv", render_csv(table))
    atomic_write_json(out / "report.json", report)
    _log_wandb(table, out, cfg, report.get("backbone_hrsa") or [])
    log.info("report written to %s (%d runs, %d failed)", out, len(runs), len(failed))
    return report


def _backbone_specs(dirs: list[Path]) -> dict[str, dict]:
    """Each backbone of the sweep as its runs resolved it (first run wins), by name."""
    specs = {}
    for run in dirs:
        cfg_path = run / ".hydra" / "config.yaml"
        try:
            spec = OmegaConf.to_container(OmegaConf.load(cfg_path).backbone, resolve=True)
        except Exception as e:  # noqa: BLE001 - an unresolvable config is reported, not fatal
            log.warning("%s: backbone config not readable for the HRSA summary: %s", cfg_path, e)
            continue
        specs.setdefault(str(spec.get("name")), spec)
    return specs


def backbone_hrsa(dirs: list[Path], out: Path, overrides: list[str] | None = None) -> list[dict]:
    """HRSA of the backbones themselves, each reasoning/SFT backbone against its base (both read causally,
    as pre-trained), at the last layer: CKA (biased, debiased, with bootstrap CI and permutation p), k-NN
    Jaccard (k=10), held-out Procrustes and cross-model probe transfer. Full output in
    ``<out>/hrsa/<base>__vs__<backbone>/hrsa.json``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from reasoning_embed.errors import ReasoningEmbedError
    from reasoning_embed.hrsa.pipeline import run_hrsa

    specs = _backbone_specs(dirs)
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
        args = [f"paths.output_dir={d}", "layers=[-1]", "progress=false", "dimcorr.pairs=diagonal",
                "stats.n_boot=100", "stats.n_perm=100", *(overrides or [])]
        if GlobalHydra.instance().is_initialized():
            hcfg = compose(config_name="hrsa", overrides=args)
        else:
            from reasoning_embed import CONF_DIR as conf
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                hcfg = compose(config_name="hrsa", overrides=args)
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


def summarize_hrsa(rep: dict) -> dict:
    """The last-layer headline numbers of one hrsa.json."""
    out: dict = {"n_texts": rep.get("n_texts"), "n_tokens": rep.get("n_tokens"), "level": rep.get("level")}
    out["cka"] = rep["cka"]["diagonal_biased"][-1]
    out["cka_debiased"] = (rep["cka"].get("diagonal_debiased") or [None])[-1]
    stats = (rep.get("stats") or {}).get("per_layer") or []
    if stats:
        c = stats[-1].get("cka", {}).get("biased", {})
        out["cka_ci"] = [c.get("low"), c.get("high")]
        out["cka_p"] = c.get("p_value")
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
        out["probe"] = {k: probe.get(k) for k in ("native", "raw_transfer", "aligned_transfer", "b_own", "chance")}
    return out


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def render_hrsa_markdown(results: list[dict]) -> str:
    if not results:
        return ""
    lines = ["", "## The backbones themselves: HRSA at the last layer (base vs reasoning / SFT, causal reading)", "",
             "| backbone | base | CKA (95% CI) | CKA p (perm.) | debiased CKA | k-NN@10 Jaccard (chance) "
             "| Procrustes held-out cos | probe native / raw / aligned / B own / chance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "note" in r:
            lines.append(f"| {r['backbone']} | {r['base']} | {r['note']} | | | | | |")
            continue
        ci = r.get("cka_ci") or [None, None]
        pr = r.get("probe") or {}
        probe = (pr["skipped"] if "skipped" in pr else
                 " / ".join(_fmt(pr.get(k), ".2f") for k in ("native", "raw_transfer", "aligned_transfer", "b_own",
                                                             "chance")))
        lines.append(f"| {r['backbone']} | {r['base']} | {_fmt(r['cka'])} ({_fmt(ci[0])}, {_fmt(ci[1])}) "
                     f"| {_fmt(r.get('cka_p'), '.3g')} | {_fmt(r.get('cka_debiased'))} "
                     f"| {_fmt(r.get('knn10'))} ({_fmt(r.get('knn10_chance'))}) "
                     f"| {_fmt(r.get('procrustes_cosine_test'))} | {probe} |")
    lines.append("")
    lines.append("Full per-layer results: `hrsa/<base>__vs__<backbone>/hrsa.json`.")
    return "\n".join(lines) + "\n"


def _realignment(sweep: Path, out: Path) -> list[dict]:
    """Cross-run curves for every pair that differs only in backbone, and one combined figure."""
    from reasoning_embed.realign import pair_sweep_runs, realign_pair

    results = []
    for a, b in pair_sweep_runs(sweep):
        res = realign_pair(a, b, out / "realignment" / f"{a.name}__vs__{b.name}", n_boot=50, plot=False)
        results.append({"run_a": str(a), "run_b": str(b), "last": res["series"][-1]})
        results[-1]["series"] = res["series"]
    if results:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for res in results:
            steps = [r["step"] for r in res["series"]]
            label = f"{Path(res['run_a']).name} vs {Path(res['run_b']).name}"
            axes[0].plot(steps, [r["a_vs_b"]["cka"] for r in res["series"]], label=label)
            axes[1].plot(steps, [r["a_vs_b"]["knn"] for r in res["series"]], label=label)
        axes[0].set_title("CKA between paired runs (same step)")
        axes[1].set_title("k-NN Jaccard between paired runs (same step)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=5)
        fig.tight_layout()
        fig.savefig(out / "realignment.png", dpi=110)
        plt.close(fig)
    for r in results:
        r.pop("series")
    return results


def _log_wandb(table: dict, out: Path, cfg, backbone_hrsa_results: list[dict]) -> None:
    import os

    if os.environ.get("WANDB_MODE") == "disabled" or not cfg.get("wandb", True):
        return
    import wandb

    run = wandb.init(project=cfg.get("wandb_project", "reasoning-embed"), job_type="report", dir=str(out),
                     group=os.environ.get("WANDB_RUN_GROUP"), reinit="finish_previous")
    cols = ["backbone", "finetune"] + table["columns"]
    run.log({"report/table": wandb.Table(columns=cols, data=[
        [r["backbone"], r["finetune"]] + [r["cells"][c].get("mean") for c in table["columns"]] for r in table["rows"]])})
    dcols = ["backbone", "base", "finetune", "benchmark", "mean_delta", "ci_low", "ci_high", "p_wilcoxon",
             "p_permutation", "verdict"]
    run.log({"report/deltas": wandb.Table(columns=dcols, data=[[d.get(c) for c in dcols] for d in table["deltas"]
                                                               if "note" not in d])})
    hcols = ["backbone", "base", "cka", "cka_debiased", "cka_p", "knn10", "knn10_chance", "procrustes_cosine_test"]
    hrows = [[r.get(c) for c in hcols] + [json.dumps(r.get("probe")), r.get("note")] for r in backbone_hrsa_results]
    if hrows:
        run.log({"report/backbone_hrsa": wandb.Table(columns=hcols + ["probe", "note"], data=hrows)})
    if (out / "realignment.png").exists():
        run.log({"report/realignment": wandb.Image(str(out / "realignment.png"))})
    run.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
@user_errors_exit
def main(cfg: DictConfig):
    quiet_environment()
    return make_report(cfg)


if __name__ == "__main__":
    main()
