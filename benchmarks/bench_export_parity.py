"""Export parity and the cost of the instruction boundary, on a trained run.

    .venv/bin/python benchmarks/bench_export_parity.py --run outputs/train/runs/<run>   # e.g. make train's run

1. Parity: max |SentenceTransformer(run/model) - the framework's evaluation embedding| over *all* held-out
   queries (``encode_query`` with each row's instruction) and passages (``encode_document``) of the run's
   validation files, at the run's own (unequal) query/passage limits. Target: <= 1e-5.
2. The instruction boundary: held-out nDCG@10 (mean over the validation files, all their queries) with the
   ``prompt_tokens`` rule (a first word that BPE merges into the prompt's trailing space is left out of the
   mean) and the ``offsets`` rule (it is kept), the same trained weights read both ways, and the share of
   queries whose first word the ``prompt_tokens`` rule drops.
3. The run's own figure: nDCG@10 on the run's validation sample (``data.val_max_queries`` per file, drawn with
   ``data.seed``) beside ``metrics.json``'s ``final_val``, which it must equal; (2) uses every query instead.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def held_out_sets(run: Path, max_queries: int | None = None, seed: int = 0):
    """The run's validation files (as ``data_report.json`` lists them): every query of each, or the run's own
    sample of ``max_queries`` per file drawn with ``seed`` (``data.val_max_queries``, ``data.seed``)."""
    from reasoning_embed.data.jsonl import read_jsonl
    from reasoning_embed.retrieval import retrieval_set_from_rows

    files = json.loads((run / "data_report.json").read_text())["val"]
    return [retrieval_set_from_rows(Path(f).stem, read_jsonl(f)[0], max_queries, seed) for f in files]


def run_sample_ndcg(run: Path, encoder) -> tuple[float, float, str]:
    """nDCG@10 on the run's own validation sample, the run's ``final_val`` figure, and how the sample was drawn."""
    from omegaconf import OmegaConf

    from reasoning_embed.retrieval import evaluate_retrieval

    data = OmegaConf.load(run / ".hydra" / "config.yaml")
    n, seed = data.data.val_max_queries, int(data.data.seed)
    scores = [evaluate_retrieval(encoder, rs, 10)["ndcg@10"] for rs in held_out_sets(run, n, seed)]
    final = json.loads((run / "metrics.json").read_text())["final_val"]["val/ndcg@10"]
    return sum(scores) / len(scores), final, f"{n} queries per file, seed {seed}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a training run directory (it holds model/ and .hydra/)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reasoning_embed.models.export import load_export

    from reasoning_embed.models.loading import load_encoder
    from reasoning_embed.retrieval import evaluate_retrieval

    run = Path(args.run)
    ours = load_encoder(str(run))
    settings = json.loads((run / "model" / "reasoning_embed.json").read_text())
    st = load_export(run / "model")
    sets = held_out_sets(run)
    tok = ours.tokenizer
    diff_q = diff_p = 0.0
    n_q = n_p = 0
    for rs in sets:
        for inst in sorted(set(rs.instructions)):
            qs = [q for q, i in zip(rs.queries, rs.instructions) if i == inst]
            a = st.encode_query(qs, prompt=tok.prompt(inst), convert_to_tensor=True, batch_size=64)
            diff_q = max(diff_q, (a - ours.encode(qs, inst)).abs().max().item())
            n_q += len(qs)
        b = st.encode_document(rs.corpus, convert_to_tensor=True, batch_size=64)
        diff_p = max(diff_p, (b - ours.encode(rs.corpus)).abs().max().item())
        n_p += len(rs.corpus)
    print(f"run: {run}  limits: queries {tok.max_query_length}, passages {tok.max_passage_length} tokens; "
          f"boundary rule of the run: {settings['prompt_boundary']}")
    print(f"export parity: max |diff| {diff_q:.2e} over {n_q} held-out queries, {diff_p:.2e} over {n_p} passages")

    merged = total = 0
    for rs in sets:
        prompts = [tok.prompt(i) for i in rs.instructions]
        by_tokens = [tok.prompt_length(p) for p in prompts]
        tok.prompt_boundary = "offsets"
        by_offsets = tok.prompt_lengths(prompts, rs.queries)
        tok.prompt_boundary = settings["prompt_boundary"]
        merged += sum(a != b for a, b in zip(by_tokens, by_offsets))
        total += len(prompts)
    ndcg = {}
    for rule in ("prompt_tokens", "offsets"):
        tok.prompt_boundary = rule
        scores = [evaluate_retrieval(ours, rs, 10)["ndcg@10"] for rs in sets]
        ndcg[rule] = sum(scores) / len(scores)
    tok.prompt_boundary = settings["prompt_boundary"]
    sample, final, how = run_sample_ndcg(run, ours)
    print(f"held-out nDCG@10 on the run's own validation sample ({how}): {sample:.4f}, the run's final_val "
          f"{final:.4f}; on every held-out query (below): the run's rule {ndcg[settings['prompt_boundary']]:.4f}")
    print(f"first word merged into the prompt (dropped by prompt_tokens): {merged}/{total} held-out queries "
          f"({100 * merged / max(total, 1):.0f}%)")
    print(f"held-out nDCG@10: prompt_tokens (first word out of the mean) {ndcg['prompt_tokens']:.4f}, "
          f"offsets (first word in) {ndcg['offsets']:.4f}, difference {ndcg['offsets'] - ndcg['prompt_tokens']:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "run": str(run), "max_query_length": tok.max_query_length, "max_passage_length": tok.max_passage_length,
            "parity_max_abs_diff_queries": diff_q, "parity_max_abs_diff_passages": diff_p, "n_queries": n_q,
            "n_passages": n_p, "first_word_merged": merged, "queries": total, "ndcg@10": ndcg,
            "trained_boundary": settings["prompt_boundary"], "ndcg@10_run_sample": sample,
            "final_val_ndcg@10": final}, indent=2))


if __name__ == "__main__":
    main()
