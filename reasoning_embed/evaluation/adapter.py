"""The mteb 2.x model adapter: this framework's ``Encoder`` behind mteb's encoder *and* search protocols.

Encoding (``encode``): all texts of an mteb call are gathered from its DataLoader and embedded together,
grouped longest first by token count (little padding), in the original order on return: the project's one
encode loop (:mod:`reasoning_embed.models.encode`), the same as ``Encoder.encode``. Texts are
stripped the way sentence-transformers strips ``prompt + text`` before tokenizing (so an export embeds
identically here and as a plain ``SentenceTransformer``). The instruction comes from an
:class:`InstructionTable` looked up by task name:

- ``prompt_type == query``     -> ``"Instruct: {instruction}\\nQuery: " + text`` (prompt tokens attended to,
  excluded from mean pooling);
- ``prompt_type == document``  -> the bare text;
- ``prompt_type is None``      -> symmetric tasks (STS, classification, clustering, pair classification,
  bitext): the instruction on both sides (``symmetric_both_sides``; off -> bare text).

Search (``index`` / ``search``): retrieval tasks are scored with :func:`reasoning_embed.retrieval.exact_search`,
the same exact inner-product search the training-time validation uses (faiss ``IndexFlatIP`` on CPU, torch
top-k on GPU), so mteb's retrieval numbers and ``val/ndcg@10`` come from one search implementation. mteb
sees the adapter as a ``SearchProtocol`` and never runs its own top-k. Reranking tasks (``top_ranked``)
score each query's candidate list only.

Every call is recorded in ``adapter.calls`` (task, subset, prompt type, instruction, number of texts), and
the instruction used per task in ``adapter.instructions_used``; ``summary.json`` reports both.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasoning_embed.evaluation.instructions import InstructionTable, load_instruction_table
from reasoning_embed.models.encode import encode

log = logging.getLogger("reasoning_embed.evaluation")


def _is_document(prompt_type) -> bool:
    return prompt_type is not None and getattr(prompt_type, "value", prompt_type) == "document"


def _is_query(prompt_type) -> bool:
    return prompt_type is not None and getattr(prompt_type, "value", prompt_type) == "query"


class MtebEncoderAdapter:
    """mteb ``EncoderProtocol`` + ``SearchProtocol`` for a :class:`reasoning_embed.models.encoder.Encoder`."""

    def __init__(self, encoder, instructions: InstructionTable | str | dict | None = None, batch_size: int = 32,
                 name: str | None = None, revision: str | None = None, search_backend: str = "auto",
                 corpus_chunk_size: int = 100_000, show_progress: bool = False):
        self.encoder = encoder
        self.instructions = load_instruction_table(instructions)
        self.batch_size = batch_size
        self.search_backend = search_backend
        self.corpus_chunk_size = corpus_chunk_size
        self.show_progress = show_progress
        self.calls: list[dict] = []
        self.instructions_used: dict[str, dict] = {}
        self._corpus = None
        self._corpus_ids: list[str] = []
        self._index_ctx: dict = {}
        self._meta = self._make_meta(name or getattr(encoder, "name", None) or "model", revision)

    # ---- metadata -------------------------------------------------------------------------------------
    def _make_meta(self, name: str, revision: str | None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        name = str(name).rstrip("/")
        if "/" not in name or Path(name).exists():
            name = f"reasoning-embed/{Path(name).name or 'model'}"
        n_params = sum(p.numel() for p in self.encoder.parameters())
        tok = self.encoder.tokenizer
        return ModelMeta.create_empty(overwrites=dict(
            name=name, revision=revision or "local", loader=None, n_parameters=n_params,
            embed_dim=self.encoder.dim, max_tokens=max(tok.max_query_length, tok.max_passage_length),
            similarity_fn_name=ScoringFunction.COSINE if self.encoder.normalize else ScoringFunction.DOT_PRODUCT,
            use_instructions=True, framework=["PyTorch"], modalities=["text"], open_weights=True))

    @property
    def mteb_model_meta(self):
        return self._meta

    # ---- instructions ---------------------------------------------------------------------------------
    def instruction_for(self, task_metadata, prompt_type) -> str | None:
        """The instruction the texts of this call get (None for documents)."""
        name = task_metadata.name
        instruction, source = self.instructions.resolve(name, task_metadata.type)
        entry = self.instructions_used.setdefault(name, {"instruction": instruction, "source": source,
                                                          "type": task_metadata.type, "sides": []})
        if _is_document(prompt_type):
            side, result = "document", None
        elif _is_query(prompt_type):
            side, result = "query", instruction
        else:
            side = "symmetric"
            result = instruction if self.instructions.symmetric_both_sides else None
        if side not in entry["sides"]:
            entry["sides"].append(side)
        return result

    # ---- EncoderProtocol ------------------------------------------------------------------------------
    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs: Any) -> np.ndarray:
        instruction = self.instruction_for(task_metadata, prompt_type)
        # sentence-transformers tokenizes (prompt + text).strip(): do the same, so an export scores
        # identically here and as a plain SentenceTransformer in mteb
        prompted = bool(self.encoder.tokenizer.prompt(instruction))
        texts = [t.rstrip() if prompted else t.strip() for batch in inputs for t in batch["text"]]
        batch_size = int(kwargs.get("batch_size") or self.batch_size)
        self.calls.append({"task": task_metadata.name, "split": hf_split, "subset": hf_subset,
                           "prompt_type": getattr(prompt_type, "value", prompt_type), "instruction": instruction,
                           "n": len(texts)})
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self.embed(texts, instruction, batch_size,
                          progress=bool(kwargs.get("show_progress_bar", self.show_progress))).numpy()

    def embed(self, texts: list[str], instruction: str | None, batch_size: int,
              progress: bool = False) -> torch.Tensor:
        """``Encoder.encode(texts, instruction)``: the one encode loop, batches grouped by *token* length
        (:mod:`reasoning_embed.models.encode`)."""
        return encode(self.encoder, texts, instruction, instruction is not None, batch_size, progress)

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        from mteb.similarity_functions import cos_sim, dot_score

        return cos_sim(embeddings1, embeddings2) if self.encoder.normalize else dot_score(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        from mteb.similarity_functions import pairwise_cos_sim, pairwise_dot_score

        if self.encoder.normalize:
            return pairwise_cos_sim(embeddings1, embeddings2)
        return pairwise_dot_score(embeddings1, embeddings2)

    # ---- SearchProtocol -------------------------------------------------------------------------------
    def _encode_dataset(self, dataset, task_metadata, hf_split, hf_subset, prompt_type, encode_kwargs, num_proc):
        from mteb._create_dataloaders import create_dataloader

        loader = create_dataloader(dataset, task_metadata=task_metadata, prompt_type=prompt_type,
                                   batch_size=int(encode_kwargs.get("batch_size") or self.batch_size),
                                   num_proc=num_proc)
        emb = self.encode(loader, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset,
                          prompt_type=prompt_type, **encode_kwargs)
        return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        dev = self.encoder.device
        return x.to(dev) if dev.type == "cuda" else x

    def index(self, corpus, *, task_metadata, hf_split: str, hf_subset: str, encode_kwargs: dict,
              num_proc: int | None = None, **kwargs: Any) -> None:
        """Keep the corpus; it is embedded in chunks by ``search`` (so huge corpora need not fit at once)."""
        self._corpus = corpus
        self._corpus_ids = [str(i) for i in corpus["id"]]
        self._index_ctx = dict(task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset)

    def search(self, queries, *, task_metadata, hf_split: str, hf_subset: str, top_k: int, encode_kwargs: dict,
               top_ranked: dict | None = None, num_proc: int | None = None, **kwargs: Any) -> dict:
        from mteb.types import PromptType

        from reasoning_embed.retrieval import exact_search, merge_topk

        if self._corpus is None:
            raise RuntimeError("search() called before index()")
        corpus, ids = self._corpus, self._corpus_ids
        q = self._on_device(self._encode_dataset(queries, task_metadata, hf_split, hf_subset, PromptType.query,
                                                 encode_kwargs, num_proc))
        qids = [str(i) for i in queries["id"]]
        results: dict[str, dict[str, float]] = {qid: {} for qid in qids}
        n_docs = len(ids)
        if top_ranked is not None:
            d = self._on_device(self._encode_dataset(corpus, task_metadata, hf_split, hf_subset, PromptType.document,
                                                     encode_kwargs, num_proc))
            self._rerank(q, d, qids, ids, top_ranked, top_k, results)
        else:
            best = None
            for start in range(0, n_docs, self.corpus_chunk_size):
                chunk = corpus.select(range(start, min(start + self.corpus_chunk_size, n_docs)))
                d = self._on_device(self._encode_dataset(chunk, task_metadata, hf_split, hf_subset,
                                                         PromptType.document, encode_kwargs, num_proc))
                s, i = exact_search(q, d, top_k, self.search_backend)
                best = merge_topk(best, (s, i + start), top_k)
            if best is not None:
                for row, qid in enumerate(qids):
                    results[qid] = {ids[j]: float(v) for v, j in zip(best[0][row].tolist(), best[1][row].tolist())}
        self._corpus, self._corpus_ids = None, []
        return results

    def _rerank(self, q, d, qids, ids, top_ranked, top_k, results):
        """Score each query's candidates only. When candidate lists are nearly the whole corpus (BRIGHT's
        'all documents except the excluded ids'), one exact search of top_k + (excluded) and a filter gives
        the same top-k as scoring every candidate; short lists are scored directly."""
        from reasoning_embed.retrieval import exact_search

        pos = {doc: j for j, doc in enumerate(ids)}
        cands = [[pos[str(c)] for c in (top_ranked.get(qid) or []) if str(c) in pos] for qid in qids]
        n_docs = len(ids)
        missing = max((n_docs - len(set(c)) for c in cands), default=0)
        if missing <= max(1000, n_docs // 10):
            k = min(n_docs, top_k + missing)
            s, idx = exact_search(q, d, k, self.search_backend)
            for row, qid in enumerate(qids):
                allowed, kept = set(cands[row]), {}
                for v, j in zip(s[row].tolist(), idx[row].tolist()):
                    if j in allowed:
                        kept[ids[j]] = float(v)
                        if len(kept) == top_k:
                            break
                results[qid] = kept
            return
        for row, qid in enumerate(qids):
            if not cands[row]:
                continue
            c = torch.tensor(cands[row], device=d.device)
            scores = (d[c].float() @ q[row].float())
            v, j = torch.topk(scores, min(top_k, len(cands[row])))
            results[qid] = {ids[cands[row][jj]]: float(vv) for vv, jj in zip(v.tolist(), j.tolist())}

    # ---- reporting ------------------------------------------------------------------------------------
    def calls_per_task(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for c in self.calls:
            out.setdefault(c["task"], Counter())[c["prompt_type"] or "symmetric"] += 1
        return out
