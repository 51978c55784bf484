"""Token vectors distilled from a sentence encoder: the tiny triple's stand-in for what pre-training gives an LLM.

A real LLM's token embeddings carry meaning from trillions of tokens; the tiny base cannot get it from the
offline text. Its IDF init (``models.tiny.idf_embeddings``) is a random direction per token, so a mean pool of
it matches tokens but nothing beyond them, and the study's embedders stayed below BM25 on the docstring task
(experiments/tiny_pairs/README.md). ``embedding_init: distilled`` starts from those IDF rows and moves them so
that the mean of a text's rows points where the shipped all-MiniLM-L6-v2 embeds the whole text (its top
principal components), over the corpus' train split only, as model2vec's *tokenlearn* distils a sentence
encoder into static token vectors. Tokens the train text never holds keep their IDF rows.

With ``teacher_tune_steps`` > 0 the teacher is first tuned on the train split's (query, positive) pairs with
in-batch negatives (sentence-transformers' MultipleNegativesRankingLoss at the study's temperature, lr and
batch): the shipped encoder embeds a summary line and the body it summarises as two texts of different kinds,
the tuned one places them together, and the static rows inherit that (experiments/foundry/README.md: the
untrained base's channel 42.6 -> 45.0 on the held-out docstring task at 60 steps).

The leading components go into the *last* dimensions: the foundry's lexical channel (``foundry/lexical.py``)
is the last ``lexical_dims`` of the hidden size, so it carries the most of the teacher. Rows are rescaled so
the largest RMS is the IDF init's ``IDF_INIT_RMS`` (the near-linear range of the tiny backbone's RMSNorms).
"""

from __future__ import annotations

from pathlib import Path

TEACHER_MAX_TOKENS = 64  # the teacher's wordpieces per text: about the text the student's 64 tokens hold
STUDENT_MAX_TOKENS = 64  # the backbone's tokens per text (the study's query and passage lengths)
BATCH = 256
STEPS = 368  # 8 epochs of the stdlib train split's 11,723 texts (46 batches each)
LR = 3e-2  # Adam on rows of RMS <= ~1 (rescaled to the start's row RMS at the end)
TUNE_BATCH = 32  # the teacher's tuning: the study's batch of queries, lr and temperature (conf/experiment)
TUNE_LR = 1e-4
TUNE_TEMPERATURE = 0.1


def distill_texts(corpus_dir: str | Path) -> list[str]:
    """The train split's queries and passages, each once, in a fixed order (the teacher's and student's input)."""
    from reasoning_embed.data.stdlib_corpus import corpus_texts

    return sorted(set(corpus_texts(Path(corpus_dir), "train", queries=True)))


def tune_teacher(teacher, corpus_dir: str | Path, steps: int, seed: int, log=print) -> None:
    """Tune ``teacher`` (a SentenceTransformer) in place for ``steps`` batches of the train split's (query,
    positive) pairs, each query against its batch's positives (in-batch negatives), then leave it in eval mode.
    Deterministic for a seed and thread count (dropout draws from ``torch.manual_seed(seed)``)."""
    import torch

    from reasoning_embed.data.jsonl import read_jsonl

    try:  # sentence-transformers >= 6 moved the losses; 5.x has only the old path
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    pairs = [(r.query, r.pos[0]) for path in sorted((Path(corpus_dir) / "train").glob("*.jsonl"))
             for r in read_jsonl(path)[0]]
    log(f"[reasoning-embed] distilled token init: tuning the teacher for {steps} steps of {TUNE_BATCH} of "
        f"{len(pairs)} train pairs (~3.4 s a step on one CPU core)")
    loss = MultipleNegativesRankingLoss(teacher, scale=1 / TUNE_TEMPERATURE)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=TUNE_LR)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * TUNE_BATCH:  # epochs of shuffled pairs, as many as the steps need
        order += torch.randperm(len(pairs), generator=generator).tolist()
    preprocess = getattr(teacher, "preprocess", None) or teacher.tokenize  # the method's newer name (>= 6), or the older
    torch.manual_seed(seed)
    teacher.train()
    for step in range(steps):
        batch = [pairs[i] for i in order[step * TUNE_BATCH:(step + 1) * TUNE_BATCH]]
        features = [preprocess([q for q, _ in batch]), preprocess([p for _, p in batch])]
        optimizer.zero_grad()
        loss(features, None).backward()
        optimizer.step()
    teacher.eval()


def teacher_targets(texts: list[str], dims: int, log=print, progress: bool = True, corpus_dir: str | Path = "",
                    tune_steps: int = 0, seed: int = 0):
    """The shipped all-MiniLM-L6-v2's normalised embeddings of ``texts`` (after ``tune_teacher`` on
    ``corpus_dir`` when ``tune_steps`` > 0), centred, on their top ``dims`` principal components (largest
    first): float64 (n, dims)."""
    import numpy as np

    from reasoning_embed.models.loading import minilm_dir
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(minilm_dir()), device="cpu")
    dimension = getattr(teacher, "get_embedding_dimension", None) or teacher.get_sentence_embedding_dimension
    width = dimension()  # the method's newer name, or the older one (sentence-transformers >= 5.0)
    if not 0 < dims <= width:
        raise ValueError(f"embedding_init: distilled needs hidden_size <= the teacher's width ({width}), got {dims}")
    teacher.max_seq_length = TEACHER_MAX_TOKENS
    if tune_steps:
        tune_teacher(teacher, corpus_dir, tune_steps, seed, log=log)
    log(f"[reasoning-embed] distilled token init: all-MiniLM-L6-v2 embeds {len(texts)} train texts "
        f"(~2.5 min on one CPU core)")
    vectors = teacher.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                             show_progress_bar=progress).astype(np.float64)
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def distilled_embeddings(tok, corpus_dir: str | Path, start, row_rms: float, seed: int, log=print,
                         progress: bool = True, teacher_tune_steps: int = 0):
    """Token embedding rows like ``start`` (len(tok), hidden size; the IDF rows), float32, distilled towards the
    teacher's text embeddings (module docstring; the teacher tuned first for ``teacher_tune_steps``) and
    rescaled so the largest row RMS is ``row_rms``. Deterministic for a seed and thread count."""
    import torch

    texts = distill_texts(corpus_dir)
    targets = teacher_targets(texts, start.shape[1], log=log, progress=progress, corpus_dir=corpus_dir,
                              tune_steps=teacher_tune_steps, seed=seed)
    targets = torch.as_tensor(targets[:, ::-1].copy(), dtype=torch.float32)  # the leading components last
    rows = torch.nn.Parameter(start / row_rms)  # rows of RMS <= ~1, the scale LR is for
    ids = [t[:STUDENT_MAX_TOKENS] or [tok.pad_token_id] for t in tok(texts, add_special_tokens=False)["input_ids"]]
    optimizer = torch.optim.Adam([rows], lr=LR)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    while len(batches) < STEPS:  # epochs of shuffled batches, as many as the steps need
        order = torch.randperm(len(texts), generator=generator).tolist()
        batches += [order[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    for batch in batches[:STEPS]:
        flat = torch.tensor([i for b in batch for i in ids[b]])
        offsets = torch.tensor([0] + [len(ids[b]) for b in batch[:-1]]).cumsum(0)
        pooled = torch.nn.functional.embedding_bag(flat, rows, offsets, mode="mean")
        loss = 1 - torch.nn.functional.cosine_similarity(pooled, targets[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = rows.detach()
    return (rows * (row_rms / rows.pow(2).mean(1).sqrt().max())).float()
