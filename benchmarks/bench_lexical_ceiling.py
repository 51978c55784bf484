"""How far lexical matching over a backbone's own tokens can go on the held-out stdlib splits (nDCG@10 x 100).

`make train` validates a tiny dense model (mean pooling, hidden 256) against BM25. This prints, on the same
held-out sets (`val/` unless `--split`, 500 queries per file, seed 42, queries without their instruction as the
pooling excludes it), what a bag of the backbone's tokens can reach:

- `bm25`: the project's baseline (`evaluation.baselines`, code-aware word tokens), the figure to beat;
- `tfidf`: exact sparse TF-IDF cosine over the backbone's tokens (IDF from the train split's positives):
  what perfect lexical weighting over these tokens reaches with no dimension limit;
- `tfidf-words`: the same over BM25's own tokens, whole texts: where it stays below `bm25`, the gap is BM25's
  scoring (term saturation, length normalisation), which a mean pool of static token vectors (raw counts) lacks,
  not the tokenizer;
- `tfidf-logtf`: `tfidf` with sublinear term frequency (1 + log tf), i.e. with saturation, which a model needs
  its context (attention) to compute: the best of the bag weightings tried (raw, binary and log tf, each with
  IDF^0.5, ^1 and ^1.5), with no dimension limit;
- `tfidf-d<N>`: the same bag squeezed into N dense dimensions by a random Gaussian projection (mean of 3
  draws): the ideal mean-pooled bag of near-orthogonal token vectors at the model's width;
- `tf-d<N>`: the unweighted bag at N dimensions (what an untrained bag-like model starts from);
- `logtf-pivot`: `tfidf-logtf` mean-pooled (divided by the token count) with one constant dimension added at a
  quarter of the passages' RMS norm, so the cosine normalises length only in part, as BM25's b < 1 does (a bias
  a model can write); larger constants score lower (measured: 1/2, 1, 2 of the RMS);
- `logtf-lsa-d<N>`: the `tfidf-logtf` bag projected onto the top N right singular vectors of the train split's
  bags (queries and positives): token vectors from corpus co-occurrence (LSA), an init that places related tokens
  together instead of at random; where it is below `tfidf-d<N>`, the task needs exact token identity more than
  co-occurrence at that width;
- `logtf-minilm384`: the `tfidf-logtf` bag over token vectors from the shipped all-MiniLM-L6-v2 (each token's
  text embedded alone, then centred: static vectors in which related tokens are close, as model2vec distils
  them), 384 dims; `logtf+minilm`: the exact `tfidf-logtf` bag with that part appended at weight 0.1 (0.05,
  0.2, 0.3 and 0.5 measured no higher on docstrings). Where these stay below BM25, token-to-token similarity,
  even a pretrained encoder's, does not close the gap: what is left needs the words' context.

A dense model at width N beats `tfidf-d<N>` only by learning more than lexical identity (which tokens
mean the same), so the gap between `tfidf-d<N>` and `bm25` is what its training must bring.

    python benchmarks/bench_lexical_ceiling.py                         # the make-train backbone
    python benchmarks/bench_lexical_ceiling.py --backbone outputs/backbones/tiny_triple-<id>/base
    python benchmarks/bench_lexical_ceiling.py --data outputs/data/stdlib --split test   # the local benchmark's split
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import _common  # noqa: F401  (offline env, sys.path)
import numpy as np
import torch


def _newest(pattern: str) -> Path:
    hits = sorted((p for p in glob.glob(str(_common.ROOT / pattern)) if Path(p).is_dir()), key=lambda p: Path(p).stat().st_mtime)
    if not hits:
        raise SystemExit(f"nothing matches {pattern}: run `make train` first (it builds the backbone and data)")
    return Path(hits[-1])


def bag(tokenizer, texts: list[str], max_len: int, vocab: int):
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_len]
        rows += [i] * len(ids)
        cols += ids
    return csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(texts), vocab))


def log_tf(counts):
    """Sublinear term frequency: each count c becomes 1 + log c (zeros stay zero)."""
    out = counts.tocsr(copy=True)
    out.data = 1.0 + np.log(out.data)
    return out


def lsa_basis(rows, tok, args, vocab: int, idf):
    """The top ``max(args.dims)`` right singular vectors (vocab x dims, largest first) of the train split's
    sublinear TF-IDF bags, queries and positives: LSA token vectors, fitted on train only."""
    from scipy.sparse import vstack
    from scipy.sparse.linalg import svds

    bags = vstack([bag(tok, [r.query for r in rows], args.query_length, vocab),
                   bag(tok, [r.pos[0] for r in rows], args.passage_length, vocab)])
    _, s, vt = svds(log_tf(bags).multiply(idf).tocsr().astype(np.float64), k=max(args.dims))
    return vt[np.argsort(-s)].T


def encoder_token_vectors(tok, vocab: int) -> np.ndarray:
    """Each token's own text embedded by the shipped all-MiniLM-L6-v2 (vocab x 384), centred so the direction
    every token shares does not dominate the bag."""
    from reasoning_embed.evaluation.baselines import minilm_model

    vectors = minilm_model().encode([tok.decode([i]) for i in range(vocab)], batch_size=256, convert_to_numpy=True,
                                    normalize_embeddings=True)
    return vectors - vectors.mean(0)


WORD_SPACE = 1 << 22  # column space for word ids (sparse: only the columns used are ever made dense)


class WordIds:
    """BM25's tokens (``evaluation.baselines.code_tokens``) as ids, called like a tokenizer so :func:`bag` reads them."""

    def __init__(self):
        from reasoning_embed.evaluation.baselines import code_tokens

        self.code_tokens, self.ids = code_tokens, {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.ids.setdefault(w, len(self.ids)) for w in self.code_tokens(text)]}


def ndcg10(q, d, qrels) -> float:
    from reasoning_embed.retrieval import exact_search, retrieval_metrics

    q = torch.nn.functional.normalize(torch.as_tensor(q, dtype=torch.float32), dim=-1)
    d = torch.nn.functional.normalize(torch.as_tensor(d, dtype=torch.float32), dim=-1)
    scores, idx = exact_search(q, d, 10, "torch")
    return retrieval_metrics(scores, idx, qrels, 10)["ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="a backbone directory (default: the newest outputs/backbones/tiny_random-*)")
    ap.add_argument("--data", help="a mined corpus (default: the newest outputs/data/stdlib_mined-*)")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--query-length", type=int, default=64)
    ap.add_argument("--passage-length", type=int, default=64)
    ap.add_argument("--split", default="val", help="the held-out split to score (val | test: the local benchmark's)")
    args = ap.parse_args()
    from reasoning_embed.data.jsonl import data_files, read_jsonl
    from reasoning_embed.evaluation.baselines import bm25_search
    from reasoning_embed.models.backbone import load_tokenizer
    from reasoning_embed.retrieval import retrieval_metrics, retrieval_set_from_rows

    backbone = Path(args.backbone) if args.backbone else _newest("outputs/backbones/tiny_random-*")
    data = Path(args.data) if args.data else _newest("outputs/data/stdlib_mined-*")
    tok = load_tokenizer(str(backbone))  # the project's loader: bpe_code keeps its own pipeline
    vocab = len(tok)
    if max(args.dims) >= vocab:
        raise SystemExit(f"--dims must be below the backbone's vocabulary ({vocab} ids), got {max(args.dims)}")
    train_rows = [r for f in data_files(data / "train") for r in read_jsonl(f)[0]]
    train = bag(tok, [r.pos[0] for r in train_rows], args.passage_length, vocab)
    idf = np.log((train.shape[0] + 1) / (np.asarray((train > 0).sum(0)).ravel() + 0.5))
    words = WordIds()
    word_train = bag(words, [r.pos[0] for r in train_rows], WORD_SPACE, WORD_SPACE)
    word_idf = np.log((word_train.shape[0] + 1) / (np.asarray((word_train > 0).sum(0)).ravel() + 0.5))
    lsa = lsa_basis(train_rows, tok, args, vocab, idf)
    semantic = encoder_token_vectors(tok, vocab)
    sets = [retrieval_set_from_rows(f.stem, read_jsonl(f)[0], 500, 42) for f in data_files(data / args.split)]
    print(f"backbone {backbone.name} ({type(tok).__name__}, {vocab} ids), held-out {data.name}/{args.split}, "
          f"queries {args.query_length} / passages {args.passage_length} tokens; nDCG@10 x 100")
    table: dict[str, list[float]] = {}
    for vs in sets:
        scores, idx = bm25_search(vs.queries, vs.corpus, 10)
        table.setdefault("bm25", []).append(retrieval_metrics(scores, idx, vs.qrels, 10)["ndcg@10"])
        q, d = bag(tok, vs.queries, args.query_length, vocab), bag(tok, vs.corpus, args.passage_length, vocab)
        table.setdefault("tfidf", []).append(ndcg10(q.multiply(idf).toarray(), d.multiply(idf).toarray(), vs.qrels))
        lq, ld = log_tf(q).multiply(idf).tocsr(), log_tf(d).multiply(idf).tocsr()  # the sublinear-tf bags
        dense_q, dense_d = lq.toarray(), ld.toarray()  # made dense once: three rows below read them
        table.setdefault("tfidf-logtf", []).append(ndcg10(dense_q, dense_d, vs.qrels))
        mq, md = dense_q / q.sum(1).A, dense_d / d.sum(1).A
        pivot = 0.25 * np.sqrt((np.linalg.norm(md, axis=1) ** 2).mean())
        table.setdefault("logtf-pivot", []).append(ndcg10(np.hstack([mq, np.full((len(mq), 1), pivot)]),
                                                          np.hstack([md, np.full((len(md), 1), pivot)]), vs.qrels))
        for dim in args.dims:
            table.setdefault(f"logtf-lsa-d{dim}", []).append(ndcg10(lq @ lsa[:, :dim], ld @ lsa[:, :dim], vs.qrels))
        sq, sd = lq @ semantic, ld @ semantic  # the sublinear bags over the encoder's token vectors
        table.setdefault("logtf-minilm384", []).append(ndcg10(sq, sd, vs.qrels))
        table.setdefault("logtf+minilm", []).append(ndcg10(np.hstack([dense_q, 0.1 * sq]),
                                                           np.hstack([dense_d, 0.1 * sd]), vs.qrels))
        wq, wd = bag(words, vs.queries, WORD_SPACE, WORD_SPACE), bag(words, vs.corpus, WORD_SPACE, WORD_SPACE)
        used = np.union1d(wq.indices, wd.indices)
        table.setdefault("tfidf-words", []).append(ndcg10(wq[:, used].multiply(word_idf[used]).toarray(),
                                                          wd[:, used].multiply(word_idf[used]).toarray(), vs.qrels))
        for dim in args.dims:
            for name, w in ((f"tfidf-d{dim}", idf), (f"tf-d{dim}", np.ones(vocab))):
                runs = []
                for seed in range(3):
                    proj = np.random.default_rng(seed).standard_normal((vocab, dim)) / np.sqrt(dim)
                    runs.append(ndcg10(q.multiply(w) @ proj, d.multiply(w) @ proj, vs.qrels))
                table.setdefault(name, []).append(float(np.mean(runs)))
    names = [vs.name for vs in sets]
    print(f"{'':<16}" + "".join(f"{n:>12}" for n in names) + f"{'mean':>12}")
    for row, values in table.items():
        print(f"{row:<16}" + "".join(f"{100 * v:>12.1f}" for v in values) + f"{100 * np.mean(values):>12.1f}")


if __name__ == "__main__":
    main()
