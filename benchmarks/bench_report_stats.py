"""Calibration figures of the report's statistics and of the HRSA intervals, on simulated data with a known truth.

    python benchmarks/bench_report_stats.py            # ~10 min on one CPU core (200 datasets per setting)
    python benchmarks/bench_report_stats.py --quick    # fewer simulations
    python benchmarks/bench_report_stats.py --only intervals --bootstrap   # + the bootstrap the intervals replaced
    python benchmarks/bench_report_stats.py --hrsa DIR_RLVR/hrsa.json DIR_SFT/hrsa.json   # + raw vs calibrated CKA

Prints: type-I error of the seed-level sign-flip test over null studies; its power against the report's
prediction with a planted difference; how often TOST declares equal backbones equivalent (and backbones one
margin apart); coverage of the hierarchical bootstrap; coverage of the HRSA intervals (CKA jackknife, k-NN
split-sample; optionally against the text-level percentile bootstrap they replace); and, given hrsa.json files,
the raw and calibrated CKA and k-NN.
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # noqa: F401  (offline env, repository on sys.path)
import numpy as np
import torch


def studies(rng, n_studies, n_seeds, n_tasks, delta=0.0, seed_sd=1.0, task_sd=1.0):
    return delta + rng.normal(0, seed_sd, (n_studies, n_seeds, 1)) + rng.normal(0, task_sd, (n_studies, n_seeds, n_tasks))


def report_stats(sims: int) -> None:
    from reasoning_embed.report.stats import hierarchical_bootstrap_ci, power_difference, seeds_needed, sign_flip_p_value, tost

    rng = np.random.default_rng(0)
    print(f"== report statistics ({sims} simulated studies each; alpha 0.05)")
    for n in (3, 6, 8, 12):
        D = studies(rng, sims, n, 10).mean(-1)
        print(f"type-I error, sign-flip over {n:2d} seeds: {np.mean([sign_flip_p_value(d) < 0.05 for d in D]):.3f}")
    for n, delta in ((8, 1.0), (10, 0.9), (12, 0.7)):
        sd = np.sqrt(1 + 0.25 / 20)
        D = studies(rng, sims, n, 20, delta=delta, task_sd=0.5).mean(-1)
        obs = np.mean([sign_flip_p_value(d) < 0.05 for d in D])
        print(f"power, {n:2d} seeds, true delta {delta} (seed sd 1): observed {obs:.3f}, "
              f"predicted {power_difference(n, delta, sd):.3f}")
    sd, margin = 0.5, 1.0
    n = seeds_needed(sd, margin)["equivalence"]
    for delta in (0.0, margin):
        D = studies(rng, sims, n, 10, delta=delta, seed_sd=sd, task_sd=0.1).mean(-1)
        rate = np.mean([tost(d, margin)["p"] < 0.05 for d in D])
        print(f"TOST, {n} seeds (seeds_needed for power 0.8), true delta {delta}, margin {margin}: "
              f"declared equivalent {rate:.3f}")
    S = studies(rng, min(sims, 200), 12, 15, delta=0.3)
    cov = np.mean([(lambda ci: ci[0] <= 0.3 <= ci[1])(hierarchical_bootstrap_ci(list(s), 1000, seed=i))
                   for i, s in enumerate(S)])
    print(f"hierarchical bootstrap 95% coverage, 12 seeds x 15 tasks: {cov:.3f}")


def _population_cka(A, noise):
    return float(np.sum(A ** 2) / np.sqrt(A.shape[0] * np.sum((A.T @ A + noise ** 2 * np.eye(A.shape[1])) ** 2)))


def interval_coverage(sims: int, bootstrap: bool) -> None:
    from reasoning_embed.hrsa import cka_bootstrap_ci, knn_bootstrap_ci
    from reasoning_embed.hrsa.intervals import cka_jackknife, knn_interval

    print(f"== HRSA interval coverage ({sims} simulated datasets per setting; nominal 0.95). Targets: population CKA;"
          " E_n = the mean over the simulations (expected value at this n)")
    print("setting               | CKA biased: pop. / E_n | CKA debiased (pop.) | kNN@10 Jaccard / mutual (E_n)"
          + (" | bootstrap: biased (E_n) / debiased / kNN" if bootstrap else ""))
    for n, d, noise in ((200, 5, 1.0), (400, 10, 2.0), (150, 30, 1.0), (400, 10, 0.3), (1000, 20, 1.0)):
        rng = np.random.default_rng(n + d)
        A = rng.normal(size=(d, d)) / np.sqrt(d)
        pop = _population_cka(A, noise)
        rows = {key: [] for key in ("bp", "bn", "deb", "kj", "km", "bb", "bd", "bk")}
        for s in range(sims):
            X = rng.normal(size=(n, d))
            Xt, Yt = torch.tensor(X), torch.tensor(X @ A + noise * rng.normal(size=(n, d)))
            c = cka_jackknife(Xt, Yt, max_blocks=30, seed=s)
            k = knn_interval(Xt, Yt, k=10, seed=s)
            rows["bp"].append((c["biased"].population["low"], c["biased"].population["high"]))
            rows["bn"].append((c["biased"].estimate, c["biased"].low, c["biased"].high))
            rows["deb"].append((c["debiased"].low, c["debiased"].high))
            rows["kj"].append((k["jaccard"].estimate, k["jaccard"].low, k["jaccard"].high))
            rows["km"].append((k["mutual"].estimate, k["mutual"].low, k["mutual"].high))
            if bootstrap:
                b = cka_bootstrap_ci(Xt, Yt, n_boot=200, seed=s)
                rows["bb"].append((b["biased"].low, b["biased"].high))
                rows["bd"].append((b["debiased"].low, b["debiased"].high))
                kb = knn_bootstrap_ci(Xt, Yt, k=(10,), n_boot=100, seed=s)[10]
                rows["bk"].append((kb.low, kb.high))
        r = {key: np.array(v) for key, v in rows.items()}
        e_b, e_j, e_m = r["bn"][:, 0].mean(), r["kj"][:, 0].mean(), r["km"][:, 0].mean()

        def cov(iv, t):
            return np.mean((iv[:, 0] <= t) & (t <= iv[:, 1]))

        line = (f"n={n:4d} d={d:3d} noise={noise} | {cov(r['bp'], pop):.3f} / {cov(r['bn'][:, 1:], e_b):.3f}"
                f"          | {cov(r['deb'], pop):.3f}               | {cov(r['kj'][:, 1:], e_j):.3f} / "
                f"{cov(r['km'][:, 1:], e_m):.3f}")
        if bootstrap:
            line += f" | {cov(r['bb'], e_b):.3f} / {cov(r['bd'], pop):.3f} / {cov(r['bk'], e_j):.3f}"
        print(line, flush=True)


def grouped_coverage(sims: int) -> None:
    """Token rows grouped by text (rows of one text share a text effect): the intervals move whole texts."""
    from reasoning_embed.hrsa.intervals import cka_jackknife, knn_interval

    T, per, d = 60, 4, 8
    rng = np.random.default_rng(11)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    g = np.repeat(np.arange(T), per)
    r = []
    for s in range(sims):
        X = rng.normal(size=(T, d))[g] + 0.7 * rng.normal(size=(T * per, d))
        Xt, Yt = torch.tensor(X), torch.tensor(X @ A + rng.normal(size=(T * per, d)))
        k, c = knn_interval(Xt, Yt, g, k=10, seed=s), cka_jackknife(Xt, Yt, g, seed=s)
        r.append([(iv.estimate, iv.low, iv.high) for iv in (k["jaccard"], k["mutual"], c["biased"])])
    r = np.array(r)
    cov = [np.mean((r[:, i, 1] <= r[:, i, 0].mean()) & (r[:, i, 0].mean() <= r[:, i, 2])) for i in range(3)]
    print(f"grouped rows ({T} texts x {per} tokens, d={d}, {sims} datasets), E_n coverage: kNN@10 Jaccard "
          f"{cov[0]:.3f}, mutual {cov[1]:.3f}, CKA biased {cov[2]:.3f}", flush=True)


def calibrated_table(paths: list[str]) -> None:
    print("== raw vs null-calibrated similarity (last stats layer)")
    for p in paths:
        rep = json.loads(open(p).read())
        names = f"{rep['models']['model_a']['name']} vs {rep['models']['model_b']['name']}"
        last = rep["stats"]["per_layer"][-1]
        parts = []
        for name in ("biased", "debiased"):
            e = last["cka"][name]
            parts.append(f"CKA {name} {e['estimate']:.3f} -> {e['calibrated']['score']:.3f} (tau {e['calibrated']['tau']:.3f})")
        for k, e in last.get("knn_jaccard", {}).items():
            if e.get("calibrated"):
                parts.append(f"kNN@{k} {e['estimate']:.3f} -> {e['calibrated']['score']:.3f}")
        print(f"{names} (layer {last['layer_a']}, {rep['stats']['n_texts']} texts): " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hrsa", nargs="*", default=[], help="hrsa.json files to print raw vs calibrated scores of")
    ap.add_argument("--bootstrap", action="store_true", help="also the text-level percentile bootstrap intervals")
    ap.add_argument("--only", choices=("report", "intervals"), help="one part only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.only != "intervals":
        report_stats(100 if args.quick else 400)
    if args.only != "report":
        interval_coverage(20 if args.quick else 200, args.bootstrap)
        grouped_coverage(30 if args.quick else 150)
    if args.hrsa:
        calibrated_table(args.hrsa)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
