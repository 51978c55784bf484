"""The mteb adapter on a micro model: protocols, instructions per side, length sorting, shared exact search,
the offline local benchmark end to end in-process, and the BRIGHT stand-in's one-instruction-per-domain."""

import json

import pytest
import torch

from conftest import synthetic_rows, write_jsonl


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    enc = build_encoder({"path": str(micro_backbone), "name": "micro"}, max_query_length=96, max_passage_length=48)  # room for the instruction: a query cut inside it embeds as zero
    with torch.no_grad():  # off the init, so different prompts give visibly different embeddings
        g = torch.Generator().manual_seed(0)
        for p in enc.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return enc.eval()


class _Spy:
    """Records every string the Hugging Face tokenizer turned into model input (prompt + text)."""

    def __init__(self, encoder, monkeypatch):
        self.texts = []
        hf_cls = type(encoder.tokenizer.hf)
        original = hf_cls.__call__

        def call(this, text=None, *args, **kwargs):
            if this is encoder.tokenizer.hf:
                self.texts.extend([text] if isinstance(text, str) else list(text))
            return original(this, text, *args, **kwargs)

        monkeypatch.setattr(hf_cls, "__call__", call)

    def prompts(self, tokenizer, instructions):
        """How many received strings start with each instruction's prompt, and how many with none (a bare
        prompt is the prompt-length measurement, not a model input)."""
        counts = {i: sum(t.startswith(tokenizer.prompt(i)) and t != tokenizer.prompt(i) for t in self.texts)
                  for i in instructions}
        counts[None] = sum(not t.startswith("Instruct: ") for t in self.texts)
        return counts


def _loader(texts, batch_size=2):
    from datasets import Dataset
    from torch.utils.data import DataLoader

    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)


def test_adapter_protocols_instruction_sides_and_length_sorting(encoder, monkeypatch):
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask
    from mteb.mocks.mock_tasks.sts import MockSTSTask
    from mteb.models import EncoderProtocol, SearchProtocol
    from mteb.models.model_meta import ScoringFunction
    from mteb.types import PromptType

    from reasoning_embed.evaluation.adapter import MtebEncoderAdapter
    from reasoning_embed.evaluation.instructions import load_instruction_table

    table = load_instruction_table({"default": "Default inst", "tasks": {"MockRetrievalTask": "Retrieve mock"},
                                    "by_type": {"STS": "Sts inst"}})
    ad = MtebEncoderAdapter(encoder, table, batch_size=3)
    assert isinstance(ad, EncoderProtocol) and isinstance(ad, SearchProtocol)
    assert ad.mteb_model_meta.similarity_fn_name is ScoringFunction.COSINE
    assert "/" in ad.mteb_model_meta.name and ad.mteb_model_meta.embed_dim == encoder.dim
    texts = ["a short one", "a much, much longer text about parsing configuration files carefully", "mid length text",
             "x", "another fairly long sentence that is here to be sorted"]
    kw = dict(hf_split="test", hf_subset="default")
    retr, sts = MockRetrievalTask.metadata, MockSTSTask.metadata

    lengths = []
    orig_forward = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward",
                        lambda self, input_ids, attention_mask, prompt_length=None:
                        (lengths.append(int(attention_mask.sum(1).max())),
                         orig_forward(self, input_ids, attention_mask, prompt_length))[1])
    q = ad.encode(_loader(texts), task_metadata=retr, prompt_type=PromptType.query, **kw)
    # all texts of the call are embedded together, longest first (mteb's own batches of 2 are not kept)
    assert lengths == sorted(lengths, reverse=True) and len(lengths) == 2
    torch.testing.assert_close(torch.from_numpy(q), encoder.encode(texts, "Retrieve mock"))
    d = ad.encode(_loader(texts), task_metadata=retr, prompt_type=PromptType.document, **kw)
    torch.testing.assert_close(torch.from_numpy(d), encoder.encode(texts))
    s = ad.encode(_loader(texts), task_metadata=sts, prompt_type=None, **kw)  # symmetric: instruction on both sides
    torch.testing.assert_close(torch.from_numpy(s), encoder.encode(texts, "Sts inst"))
    assert (torch.from_numpy(q) - torch.from_numpy(d)).abs().max() > 1e-3
    assert ad.instructions_used["MockRetrievalTask"]["sides"] == ["query", "document"]
    assert ad.instructions_used["MockSTSTask"]["source"] == "type:STS"

    off = MtebEncoderAdapter(encoder, table.__class__(**{**table.__dict__, "symmetric_both_sides": False}))
    s2 = off.encode(_loader(texts), task_metadata=sts, prompt_type=None, **kw)
    torch.testing.assert_close(torch.from_numpy(s2), encoder.encode(texts))
    # empty documents exist in real corpora: finite; one with no token is the zero vector (scores 0 against
    # everything), as the sentence-transformers export embeds it; whitespace is a token of this tokenizer
    empty = ad.embed(["", "   ", "x"], None, 4)
    assert torch.isfinite(empty).all() and torch.allclose(empty.norm(dim=1), torch.tensor([0.0, 1.0, 1.0]))
    sims = ad.similarity(q, d)
    assert sims.shape == (5, 5) and torch.allclose(ad.similarity_pairwise(q, d), torch.diagonal(torch.as_tensor(sims)))


def test_every_text_task_type_runs_through_mteb(encoder, tmp_path):
    """mteb's own evaluators (STS, classification, clustering, pair classification, reranking, bitext) call
    the adapter as they call any model; symmetric types get the instruction on both sides."""
    import mteb.mocks.mock_tasks as mock

    from reasoning_embed.evaluation.adapter import MtebEncoderAdapter
    from reasoning_embed.evaluation.runner import run_tasks
    from reasoning_embed.evaluation.summary import build_summary

    names = ["MockSTSTask", "MockClassificationTask", "MockMultilingualClusteringFastTask",
             "MockPairClassificationTask", "MockRerankingTask", "MockBitextMiningTask"]
    ad = MtebEncoderAdapter(encoder, "e5")
    done, failed = run_tasks(ad, [getattr(mock, n)() for n in names], tmp_path)
    assert failed == [] and [d["task"] for d in done] == names
    sides = {d["type"]: d["instruction_sides"] for d in done}
    assert sides["Reranking"] == ["query", "document"]
    for typ in ("STS", "Classification", "Clustering", "PairClassification", "BitextMining"):
        assert sides[typ] == ["symmetric"], typ
    summary = build_summary(done, failed, {})
    assert len(summary["type_means"]) == 6 and summary["mean_type"] == pytest.approx(summary["mean_task"])


def test_instruction_table_resolution():
    from reasoning_embed.evaluation.instructions import DEFAULT_INSTRUCTION, load_instruction_table

    t = load_instruction_table("e5")
    assert t.default == DEFAULT_INSTRUCTION
    assert DEFAULT_INSTRUCTION == "Given a query, retrieve the most relevant passage from the given passage"
    assert t.resolve("ArguAna", "Retrieval") == ("Given a claim, find documents that refute the claim", "task")
    assert t.resolve("TwentyNewsgroupsClustering.v2", "Clustering")[1] == "task:TwentyNewsgroupsClustering"
    assert t.resolve("ClimateFEVERHardNegatives", "Retrieval")[0].startswith("Given a claim about climate change")
    assert t.resolve("CQADupstackUnixRetrieval", "Retrieval")[1] == "prefix:CQADupstack"
    assert t.resolve("STS22.v2", "STS") == ("Retrieve semantically similar text.", "type:STS")
    assert t.resolve("SomeNewTask", "Classification") == (DEFAULT_INSTRUCTION, "default")
    bright = [k for k in t.tasks if k.startswith("Bright")]
    assert len(bright) == 12 and len({t.tasks[k] for k in bright}) >= 10
    assert "theorems" in t.tasks["BrightTheoremQATheoremsRetrieval"]
    assert "coding problem" in t.tasks["BrightLeetcodeRetrieval"]


@pytest.fixture(scope="module")
def local_run(encoder, corpus_dir, tmp_path_factory):
    """The `local` benchmark through mteb once (queries capped), with every prompt the tokenizer saw."""
    from reasoning_embed.evaluation import evaluate_model

    mp = pytest.MonkeyPatch()
    spy = _Spy(encoder, mp)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eval_local")
    try:
        summary = evaluate_model(encoder, "local", out, paths={"data_dir": str(corpus_dir.parent)}, max_queries=8,
                                 batch_size=128)
    finally:
        mp.undo()
        torch.set_num_threads(before)
    return summary, out, spy


def test_local_benchmark_writes_results_and_summary(local_run):
    summary, out, _ = local_run
    names = [t["task"] for t in summary["tasks"]]
    assert names == ["StdlibDocstringRetrieval", "StdlibCodeRetrieval", "LocalBrightTextRetrieval",
                     "LocalBrightDataRetrieval", "LocalBrightSystemRetrieval", "LocalBrightToolingRetrieval"]
    assert summary["complete"] and summary["failed"] == [] and summary["n_tasks"] == 6
    assert all(0 <= t["score"] <= 100 for t in summary["tasks"])
    assert summary["type_means"].keys() == {"Retrieval"}
    assert abs(summary["mean_task"] - sum(t["score"] for t in summary["tasks"]) / 6) < 1e-9
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mean_type"] == pytest.approx(summary["mean_type"])
    assert "Mean(Task)" in (out / "summary.md").read_text()
    for name in names:
        result = json.loads((out / "results" / f"{name}.json").read_text())
        assert result["task_name"] == name and "ndcg_at_10" in result["scores"]["test"][0]


def test_local_task_and_training_validation_share_the_exact_search(local_run, encoder, corpus_dir):
    """The adapter's retrieval (mteb scoring) and evaluate_retrieval (training validation) agree on nDCG@10."""
    from reasoning_embed.data.jsonl import read_jsonl
    from reasoning_embed.retrieval import evaluate_retrieval, retrieval_set_from_rows

    summary, _, _ = local_run
    rows, _ = read_jsonl(corpus_dir / "test" / "docstring.jsonl")
    val = evaluate_retrieval(encoder, retrieval_set_from_rows("docstring", rows, 8, 0), k=10)
    score = next(t["score"] for t in summary["tasks"] if t["task"] == "StdlibDocstringRetrieval")
    assert score == pytest.approx(100 * val["ndcg@10"], abs=1e-3)


def test_bright_standin_one_instruction_per_domain_each_evaluated_once(local_run, encoder):
    from reasoning_embed.evaluation.instructions import load_instruction_table

    summary, _, spy = local_run
    table = load_instruction_table("e5")
    domains = [t for t in summary["tasks"] if t["task"].startswith("LocalBright")]
    assert len(domains) == 4
    expected = {t["task"]: table.tasks[t["task"]] for t in domains}
    assert len(set(expected.values())) == 4  # four different instructions
    for t in domains:
        assert t["instruction"] == expected[t["task"]] and t["instruction_source"] == "task"
        calls = [c for c in summary["calls"] if c["task"] == t["task"]]
        # evaluated once: one query pass carrying the domain's instruction, one document pass without
        assert sorted(c["prompt_type"] for c in calls) == ["document", "query"]
        assert next(c for c in calls if c["prompt_type"] == "query")["instruction"] == expected[t["task"]]
        assert next(c for c in calls if c["prompt_type"] == "document")["instruction"] is None
    # what the model received: each domain's queries behind that domain's prompt, documents behind none
    counts = spy.prompts(encoder.tokenizer, list(expected.values()))
    for t in domains:
        n_q = next(c["n"] for c in summary["calls"] if c["task"] == t["task"] and c["prompt_type"] == "query")
        assert counts[expected[t["task"]]] == n_q > 0
    n_docs = sum(c["n"] for c in summary["calls"] if c["prompt_type"] == "document")
    assert counts[None] == n_docs > 0


def test_changed_instruction_is_evaluated_not_reused(encoder, corpus_dir, tmp_path, monkeypatch):
    """A second run with another instruction for one domain really encodes with it (no result cache)."""
    from reasoning_embed.evaluation import evaluate_model

    spy = _Spy(encoder, monkeypatch)
    bench = {"name": "standin", "local_tasks": [{"kind": "bright_standin", "corpus_dir": str(corpus_dir)}],
             "exclude": ["LocalBrightTextRetrieval", "LocalBrightDataRetrieval", "LocalBrightSystemRetrieval"],
             "max_queries": 5, "instructions": {"LocalBrightToolingRetrieval": "Given a riddle, retrieve its answer"}}
    summary = evaluate_model(encoder, bench, tmp_path)
    assert [t["task"] for t in summary["tasks"]] == ["LocalBrightToolingRetrieval"]
    assert summary["tasks"][0]["instruction"] == "Given a riddle, retrieve its answer"
    counts = spy.prompts(encoder.tokenizer, ["Given a riddle, retrieve its answer"])
    assert counts["Given a riddle, retrieve its answer"] == 5


def test_rerank_with_top_ranked_matches_brute_force(encoder):
    from datasets import Dataset
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    from reasoning_embed.evaluation.adapter import MtebEncoderAdapter

    docs = [f"document number {i} about {'alpha beta gamma delta'.split()[i % 4]} {i * 7}" for i in range(40)]
    queries = ["about alpha", "delta things", "number 7"]
    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(40)], "text": docs})
    qs = Dataset.from_dict({"id": ["q0", "q1", "q2"], "text": queries})
    ad = MtebEncoderAdapter(encoder, {"default": "Find"})
    q = encoder.encode(queries, "Find")
    d = encoder.encode(docs)
    kw = dict(task_metadata=MockRetrievalTask.metadata, hf_split="test", hf_subset="default",
              encode_kwargs={"batch_size": 8})
    for top_ranked in ({"q0": [f"d{i}" for i in range(40) if i != 3], "q1": [f"d{i}" for i in range(39)],
                        "q2": [f"d{i}" for i in range(40)]},                               # BRIGHT-like: near-full
                       {"q0": ["d1", "d5", "d9"], "q1": ["d2", "d4"], "q2": []}):            # short candidate lists
        ad.index(corpus, **kw)
        got = ad.search(qs, top_k=5, top_ranked=top_ranked, **kw)
        for row, qid in enumerate(["q0", "q1", "q2"]):
            cands = [int(c[1:]) for c in top_ranked[qid]]
            if not cands:
                assert got[qid] == {}
                continue
            scores = d[cands] @ q[row]
            best = torch.topk(scores, min(5, len(cands)))
            want = {f"d{cands[j]}": v for v, j in zip(best.values.tolist(), best.indices.tolist())}
            assert got[qid].keys() == want.keys()
            assert all(abs(got[qid][k] - want[k]) < 1e-5 for k in want)
    ad.corpus_chunk_size = 7  # full search in chunks merges to the exact top-k
    ad.index(corpus, **kw)
    got = ad.search(qs, top_k=5, **kw)
    best = torch.topk(q @ d.T, 5, dim=1)
    for row, qid in enumerate(["q0", "q1", "q2"]):
        assert set(got[qid]) == {f"d{j}" for j in best.indices[row].tolist()}


def test_model_specs_run_dir_export_backbone_and_user_files(encoder, micro_backbone, tmp_path):
    from reasoning_embed.evaluation.errors import EvaluationConfigError
    from reasoning_embed.evaluation.local_tasks import build_local_tasks
    from reasoning_embed.evaluation.model_loading import describe_model_spec, load_encoder
    from reasoning_embed.models.export import export_encoder

    run = tmp_path / "run"
    export_encoder(encoder, run / "model")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "encoder:\n  max_query_length: 96\n  max_passage_length: 48\n  pooling: mean\n"
        "  query_template: \"Instruct: {instruction}\\nQuery: \"\n")
    assert describe_model_spec(run) == ("run", str(run / "model"))
    assert describe_model_spec(run / "model")[0] == "export"
    assert describe_model_spec(micro_backbone)[0] == "backbone"
    loaded = load_encoder(run, device="cpu")
    assert loaded.tokenizer.max_query_length == 96 and loaded.tokenizer.max_passage_length == 48
    assert loaded.attention == "bidirectional" and loaded.pooling == "mean"
    texts = ["Return the absolute value.", "Parse a configuration file and return a dict of sections."]
    torch.testing.assert_close(loaded.encode(texts, "Find code"), encoder.encode(texts, "Find code"),
                               atol=1e-5, rtol=1e-5)
    raw = load_encoder(micro_backbone, {"attention": "causal", "pooling": "last_token"}, device="cpu")
    assert raw.attention == "causal" and raw.pooling == "last_token" and raw.spec_kind == "backbone"
    with pytest.raises(EvaluationConfigError, match="neither a run directory"):
        describe_model_spec(tmp_path)

    # user files: training-format JSONL and a BEIR directory
    jsonl = write_jsonl(tmp_path / "mine.jsonl", synthetic_rows(6))
    (task,) = build_local_tasks({"kind": "auto", "path": str(jsonl)})
    assert task.name == "LocalMineRetrieval" and len(task.queries) == 6
    assert task.instruction == "Given a word list, retrieve the matching text"
    beir = tmp_path / "beir"
    write_jsonl(beir / "corpus.jsonl", [{"_id": "a", "title": "T", "text": "alpha"}, {"_id": "b", "text": "beta"}])
    write_jsonl(beir / "queries.jsonl", [{"_id": "1", "text": "first"}, {"_id": "2", "text": "second"}])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\ta\t1\n2\tb\t2\n")
    (task,) = build_local_tasks({"kind": "auto", "path": str(beir), "instruction": "Find it"})
    assert task.corpus["a"] == "T alpha" and task.qrels == {"1": {"a": 1}, "2": {"b": 2}}
