"""Token vectors distilled from a sentence encoder: the tiny triple's stand-in for what pre-training gives an LLM.

A real LLM's token embeddings carry meaning from trillions of tokens; the tiny base cannot get it from the
offline text. Its IDF init (``models.tiny.idf_embeddings``) is a random direction per token, so a mean pool of
it matches tokens but nothing beyond them, and the study's embedders stayed below BM25 on the docstring task
(experiments/tiny_pairs/README.md). ``embedding_init: distilled`` starts from those IDF rows and moves them so
that the mean of a text's rows points where the shipped all-MiniLM-L6-v2 embeds the whole text (its top
principal components), over the corpus' train split only, as model2vec's *tokenlearn* distils a sentence
encoder into static token vectors. Tokens the train text never holds keep their IDF rows.

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


def distill_texts(corpus_dir: str | Path) -> list[str]:
    """The train split's queries and passages, each once, in a fixed order (the teacher's and student's input)."""
    from reasoning_embed.data.stdlib_corpus import corpus_texts

    return sorted(set(corpus_texts(Path(corpus_dir), "train", queries=True)))


def teacher_targets(texts: list[str], dims: int, log=print, progress: bool = True):
    """The shipped all-MiniLM-L6-v2's normalised embeddings of ``texts``, centred, on their top ``dims``
    principal components (largest first): float64 (n, dims)."""
    import numpy as np

    from reasoning_embed.models.loading import minilm_dir
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(minilm_dir()), device="cpu")
    dimension = getattr(teacher, "get_embedding_dimension", None) or teacher.get_sentence_embedding_dimension
    width = dimension()  # the method's newer name, or the older one (sentence-transformers >= 5.0)
    if not 0 < dims <= width:
        raise ValueError(f"embedding_init: distilled needs hidden_size <= the teacher's width ({width}), got {dims}")
    teacher.max_seq_length = TEACHER_MAX_TOKENS
    log(f"[reasoning-embed] distilled token init: all-MiniLM-L6-v2 embeds {len(texts)} train texts "
        f"(~2.5 min on one CPU core)")
    vectors = teacher.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                             show_progress_bar=progress).astype(np.float64)
    centred = vectors - vectors.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def distilled_embeddings(tok, corpus_dir: str | Path, start, row_rms: float, seed: int, log=print,
                         progress: bool = True):
    """Token embedding rows like ``start`` (len(tok), hidden size; the IDF rows), float32, distilled towards the
    teacher's text embeddings (module docstring) and rescaled so the largest row RMS is ``row_rms``.
    Deterministic for a seed and thread count; ``progress`` shows the teacher's progress bar."""
    import torch

    texts = distill_texts(corpus_dir)
    targets = teacher_targets(texts, start.shape[1], log=log, progress=progress)
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
