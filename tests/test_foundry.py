"""The backbone foundry: exact rewards, GRPO's advantages and loss by hand, and a micro build that reloads,
generates, is wired into resolve_backbone, and is bit-identical when rebuilt with the same seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from reasoning_embed.foundry.grpo import group_advantages, grpo_loss, k3_kl
from reasoning_embed.foundry.problems import (KINDS, Problem, all_problems, heldout_eval_set, lenient_answer,
                                              problems, reward, split_of)

# the foundry's model (DEFAULTS: bpe_code, the distilled init, a lexical channel) at micro size
MICRO_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                   intermediate_size=64, vocab_size=600, lexical_dims=20)
MICRO_CFG = {
    "seed": 3, "threads": 1, "model": MICRO_MODEL,
    "pretrain": {"steps": 3, "batch_size": 4, "block_size": 32, "warmup": 1, "stdlib_chars": 20_000,
                 "fact_docs": 200, "qa_docs": 50, "task_qa_docs": 200},
    "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 4},
    "sft": {"batch_size": 2},
    "eval": {"per_kind": 3, "max_new_tokens": 6, "lm_blocks": 4, "lm_block_size": 32},
}


# ---------------------------------------------------------------- problems and reward
def test_answers_are_right():
    assert Problem("add", 3, 4).answer == "7" and Problem("sub", 12, 4).answer == "8"
    assert Problem("max", 47, 52).answer == "52" and Problem("max", 61, 19).answer == "61"
    assert Problem("parity", 37).answer == "odd" and Problem("parity", 0).answer == "even"
    assert Problem("add", 3, 4).prompt == "Question: 3 + 4 = ?"


def test_reward_is_exact_match_of_the_first_answer_line():
    assert reward(" Answer: 7", "7") == 1.0
    assert reward(" Answer:   7  \nQuestion: 1 + 1 = ?", "7") == 1.0  # stripped, up to end of line
    for wrong in (" Answer: 17", " Answer: 7.0", " Answer: seven", " 7", "", " Answer: 7 Answer: 7",
                  " Answer: 3\n Answer: 7", " answer: 7"):
        assert reward(wrong, "7") == 0.0, wrong
    assert reward(" Answer: odd", "odd") == 1.0 and reward(" Answer: odd", "even") == 0.0


def test_every_direct_and_worked_completion_earns_the_reward():
    for k in KINDS:
        for p in all_problems(k)[:: max(1, len(all_problems(k)) // 40)]:
            assert reward(p.direct_completion, p.answer) == 1.0
            assert reward(p.worked_solution, p.answer) == 1.0, p.worked_solution
            other = Problem(p.kind, p.a + 1, p.b) if p.kind != "max" else Problem("max", p.a, p.a)
            if other.answer != p.answer:
                assert reward(other.direct_completion, p.answer) == 0.0


def test_lenient_answer_reads_both_formats_but_only_the_first_line():
    assert lenient_answer(" Answer: 7") == "7" and lenient_answer(" The answer is 7.") == "7"
    assert lenient_answer(" the answer is odd. Answer: even") == "odd"       # the first one counts
    assert lenient_answer(" 3 plus 4 is 7. Answer: 7") == "7"                # a worked solution
    assert lenient_answer(" 7") is None and lenient_answer(" maybe\n Answer: 7") is None
    assert lenient_answer(" The answer is 17.") != "7"                         # whole word, not a prefix
    for p in all_problems("max")[:50] + all_problems("parity"):
        assert lenient_answer(p.worked_solution) == p.answer == lenient_answer(f" The answer is {p.answer}.")
        assert reward(f" The answer is {p.answer}.", p.answer) == 0.0            # the reward stays strict


def test_qa_prose_fraction_sets_the_share_of_unchecked_answer_formats():
    from reasoning_embed.foundry.pretrain import qa_format_docs, task_qa_docs

    for docs in (task_qa_docs(4000, KINDS, 0.25, prose_fraction=0.6), qa_format_docs(4000, prose_fraction=0.6)):
        prose = sum(" The answer is " in d for d in docs) / len(docs)
        assert 0.57 < prose < 0.63
        assert all((" The answer is " in d) != (" Answer: " in d) for d in docs)   # exactly one format each
    # the answers themselves stay right, in either format
    for d in task_qa_docs(400, KINDS, 0.25, prose_fraction=0.5):
        q = [p for k in KINDS for p in all_problems(k) if d.startswith(p.prompt + " ")]
        assert len(q) == 1 and lenient_answer(d[len(q[0].prompt):]) == q[0].answer
    assert task_qa_docs(300, KINDS, 0.25) == task_qa_docs(300, KINDS, 0.25, prose_fraction=0.0)
    assert not any("The answer is" in d for d in task_qa_docs(300, KINDS, 0.25))


def test_heldout_problems_never_reach_training_text():
    from reasoning_embed.foundry.pretrain import task_qa_docs

    held = problems("heldout")
    assert held and all(split_of(p) == "heldout" for p in heldout_eval_set())
    assert not {p.key for p in held} & {p.key for p in problems("train")}
    held_prompts = {p.prompt for p in held}
    for fraction in (0.0, 0.6):
        assert not held_prompts & {d.split("?")[0] + "?" for d in task_qa_docs(2000, KINDS, 0.25, prose_fraction=fraction)}


# ---------------------------------------------------------------- GRPO by hand
def test_group_advantages_hand_example():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    a = group_advantages(r, eps=0.0)
    s = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1): sum of squares 4 * 0.25 = 1, over n - 1 = 3
    assert torch.allclose(a[0], torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))
    assert torch.all(group_advantages(r)[1] == 0)  # no signal in a uniform group
    s3 = math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3)
    assert torch.allclose(a[2], torch.tensor([-0.25, -0.25, -0.25, 0.75]) / s3)


def test_k3_kl_and_clipped_loss_by_hand():
    p = torch.log(torch.tensor([[0.5, 0.25]]))
    q = torch.log(torch.tensor([[0.25, 0.25]]))
    assert torch.allclose(k3_kl(p, q), torch.tensor([[0.5 - math.log(0.5) - 1, 0.0]]))  # e^{q-p}-(q-p)-1
    assert torch.all(k3_kl(q, q) == 0)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    z = torch.zeros(2, 3)
    adv = torch.tensor([2.0, -1.0])
    # ratio 1, beta 0: loss = -mean over completions of A (per-token mean within a completion)
    loss, kl = grpo_loss(z, z, z, adv, mask, beta=0.0)
    assert torch.isclose(loss, torch.tensor(-(2.0 - 1.0) / 2)) and kl == 0
    # ratio e^{0.5} > 1 + 0.2 with A > 0: clipped to 1.2 * A
    lp = torch.full((2, 3), 0.5)
    loss, _ = grpo_loss(lp, z, lp, torch.tensor([1.0, 1.0]), mask, clip_eps=0.2, beta=0.0)
    assert torch.isclose(loss, torch.tensor(-1.2))
    # the gradient of the surrogate at ratio 1 is the REINFORCE gradient A * dlogp
    lp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = grpo_loss(lp, lp.detach(), lp.detach(), torch.tensor([3.0]), torch.ones(1, 2), beta=0.5)
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-1.5, -1.5]]))


# ---------------------------------------------------------------- a micro build
@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory) -> Path:
    """A few dozen rows in the stdlib corpus's layout (docstrings of a handful of modules), so no corpus
    build is needed and the tokenizer trains in about a second."""
    import inspect
    import json as json_mod
    import pathlib
    import random
    import textwrap

    out = tmp_path_factory.mktemp("foundry_corpus")
    for split, mods in (("train", (json_mod, random, textwrap)), ("val", (pathlib, inspect))):
        rows = []
        for mod in mods:
            for name, obj in sorted(vars(mod).items()):
                doc = inspect.getdoc(obj) if callable(obj) and not name.startswith("_") else None
                if doc:
                    rows.append({"query": ["Retrieve the documentation", doc.split("\n")[0]], "pos": [doc], "neg": []})
        (out / split).mkdir()
        (out / split / "docstring.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return stamp_as_built(out)


def stamp_as_built(corpus: Path) -> Path:
    """Give a hand-made corpus the manifest of a built stdlib corpus, so the assets layer uses it as it is."""
    import sys

    from reasoning_embed.data.stdlib_corpus import CORPUS_VERSION

    (corpus / "manifest.json").write_text(json.dumps({"version": CORPUS_VERSION, "python": sys.version.split()[0],
                                                      "seed": 0, "num_negatives": 7, "counts": {"micro": True}}))
    return corpus


@pytest.fixture(scope="module")
def micro_triple(micro_corpus, tmp_path_factory):
    from reasoning_embed.assets import tiny_backbone

    out = tmp_path_factory.mktemp("foundry") / "backbones"
    tiny = {"variant": "rlvr", "seed": 3, **MICRO_MODEL, "foundry": True, "foundry_overrides": MICRO_CFG}
    path = tiny_backbone(out / "tiny_rlvr", tiny, micro_corpus)
    assert path.name == "tiny_rlvr" and path.parent.parent == out and path.parent.name.startswith("tiny_triple-")
    return path.parent


def test_micro_build_writes_the_triple_with_its_record(micro_triple):
    from reasoning_embed.foundry import triple_complete

    assert triple_complete(micro_triple)
    metas = {v: json.loads((micro_triple / f"tiny_{v}" / "foundry.json").read_text()) for v in ("base", "rlvr", "sft")}
    for v, m in metas.items():
        assert m["variant"] == v and 0.0 <= m["heldout_accuracy"] <= 1.0
        lo, hi = m["heldout_accuracy_ci95"]
        assert lo <= m["heldout_accuracy"] <= hi
        assert m["heldout_accuracy"] <= m["heldout_lenient_accuracy"] <= 1.0     # strict answers are lenient too
        assert math.isfinite(m["lm_loss_heldout"]) and m["seed"] == 3
        for k in ("steps", "tokens", "config", "stage_seconds"):
            assert k in m
        assert {"init", "pretrain", "rlvr", "sft", "total"} <= set(m["stage_seconds"])
    assert metas["rlvr"]["steps"] == metas["sft"]["steps"] == 2  # matched optimizer steps
    assert len({m["triple_id"] for m in metas.values()}) == 1


def test_the_triple_is_keyed_by_the_teacher_its_token_rows_are_distilled_from(micro_triple, micro_corpus, tmp_path):
    """The default init distils MiniLM (models/token_distill.py), so the cache key holds MiniLM's identity: other
    teacher weights build another triple. An init that reads no teacher keeps its former key (no "teacher")."""
    from reasoning_embed.assets import tiny_backbone
    from reasoning_embed.models.loading import model_identity, resolve_spec

    spec = json.loads((micro_triple / "asset.json").read_text())["spec"]
    assert spec["config"]["model"]["embedding_init"] == "distilled"
    assert spec["teacher"] == model_identity(resolve_spec("minilm"))
    idf = tiny_backbone(tmp_path / "tiny_random", {"variant": "random", "foundry": False, "seed": 0, **MICRO_MODEL,
                                                   "tokenizer": "bpe_code", "embedding_init": "idf"}, micro_corpus)
    assert "teacher" not in json.loads((idf / "asset.json").read_text())["spec"]


def test_saved_models_reload_and_generate(micro_triple):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok0 = None
    for v in ("base", "rlvr", "sft"):
        d = micro_triple / f"tiny_{v}"
        model = AutoModelForCausalLM.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        vocab = tok.get_vocab()
        assert tok0 is None or vocab == tok0  # one shared tokenizer
        tok0 = vocab
        x = tok("Question: 3 + 4 = ?", return_tensors="pt")
        out = model.generate(**x, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > x["input_ids"].shape[1]


def test_rlvr_and_sft_differ_from_base(micro_triple):
    from safetensors.torch import load_file

    w = {v: load_file(micro_triple / f"tiny_{v}" / "model.safetensors") for v in ("base", "rlvr", "sft")}
    assert any(not torch.equal(w["base"][k], w["sft"][k]) for k in w["base"])
    assert set(w["base"]) == set(w["rlvr"]) == set(w["sft"])


def test_same_seed_same_weights(micro_triple, micro_corpus, tmp_path):
    from safetensors.torch import load_file

    from reasoning_embed.foundry import build_triple

    build_triple(tmp_path, micro_corpus, MICRO_CFG, progress=False, log=lambda *_: None)
    for v in ("base", "rlvr", "sft"):
        a = load_file(micro_triple / f"tiny_{v}" / "model.safetensors")
        b = load_file(tmp_path / f"tiny_{v}" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), v
        ma = json.loads((micro_triple / f"tiny_{v}" / "foundry.json").read_text())
        mb = json.loads((tmp_path / f"tiny_{v}" / "foundry.json").read_text())
        assert ma["heldout_accuracy"] == mb["heldout_accuracy"] and ma["lm_loss_heldout"] == mb["lm_loss_heldout"]


def test_tiny_backbones_are_cached_by_spec_and_keep_the_random_init_fast_path(micro_triple, micro_corpus, tmp_path):
    from reasoning_embed.assets import tiny_backbone

    stamp = (micro_triple / "tiny_base" / "model.safetensors").stat().st_mtime_ns
    tiny = {"variant": "base", "seed": 3, **MICRO_MODEL, "foundry": True, "foundry_overrides": MICRO_CFG}
    assert tiny_backbone(micro_triple.parent / "tiny_base", tiny, micro_corpus) == micro_triple / "tiny_base"
    assert (micro_triple / "tiny_base" / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    fast = tiny_backbone(tmp_path / "tiny_sft", {**tiny, "variant": "sft", "foundry": False}, micro_corpus)
    meta = json.loads((fast / "foundry.json").read_text())
    assert meta["heldout_accuracy"] is None and "random init" in meta["how"]
    assert fast.parent == tmp_path and fast.name.startswith("tiny_sft-")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [fast.name]  # only what was asked is built


# ---------------------------------------------------------------- the lexical-channel base and bpe_code formats
def test_reward_reads_bpe_code_completions_as_decoded(micro_corpus):
    """bpe_code decodes " Answer: 7" as "answer:7" (lowercased, no whitespace); the reward and the lenient
    reading follow the tokenizer, so a bpe_code triple is held to the same rule as a bpe one."""
    from reasoning_embed.foundry.problems import AnswerFormat
    from reasoning_embed.models.tiny import train_bpe_tokenizer

    tok = train_bpe_tokenizer(micro_corpus, 600, "bpe_code")
    fmt = AnswerFormat.for_tokenizer(tok)

    def decoded(text):
        return tok.decode(tok(text, add_special_tokens=False)["input_ids"])

    assert decoded(" Answer: 7") == "answer:7" and reward(decoded(" Answer: 7"), "7") == 0.0   # the plain reading fails
    for k in KINDS:
        for p in all_problems(k)[:: max(1, len(all_problems(k)) // 20)]:
            assert fmt.reward(decoded(p.direct_completion), p.answer) == 1.0
            assert fmt.reward(decoded(p.worked_solution), p.answer) == 1.0, decoded(p.worked_solution)
            assert fmt.reward(decoded(f" The answer is {p.answer}."), p.answer) == 0.0     # strict
            assert fmt.lenient(decoded(f" The answer is {p.answer}.")) == fmt.expected(p.answer)
    assert fmt.reward(decoded(" Answer: 17"), "7") == 0.0 and fmt.reward(decoded(" Answer: 7 Question"), "7") == 0.0
    assert fmt.reward("", "7") == 0.0 and fmt.lenient(decoded(" 7")) is None
    assert AnswerFormat.for_tokenizer(train_bpe_tokenizer(micro_corpus, 600, "bpe")).answer_re.pattern == PLAIN_PATTERN


PLAIN_PATTERN = r"Answer:[ \t]*([^\n]*)"


def test_expose_leaves_every_logit_and_scales_the_channel():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reasoning_embed.foundry.lexical import expose

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(input_ids=x, output_hidden_states=True)
        expose(model, 6, 8.0)
        after = model(input_ids=x, output_hidden_states=True)
    assert torch.allclose(before.logits, after.logits, atol=1e-5)
    h0, h1 = before.hidden_states[-1], after.hidden_states[-1]
    assert torch.allclose(h1[..., -6:], 8.0 * h0[..., -6:], atol=1e-5) and torch.equal(h1[..., :-6], h0[..., :-6])
    with pytest.raises(ValueError, match="lexical_dims"):
        expose(model, 16, 2.0)
    with pytest.raises(ValueError, match="untied"):
        expose(Qwen2ForCausalLM(Qwen2Config(**{**config.to_dict(), "tie_word_embeddings": True})), 6, 2.0)


def test_lexical_channel_is_held_while_the_triple_is_a_language_model(micro_corpus, tmp_path):
    """With model.lexical_dims the base's channel is its init after pre-training (the default's: the token rows
    distilled from MiniLM), its final-norm gain is lexical_gain; no block of base, rlvr or sft writes it; RLVR and
    SFT train the rest, embeddings included."""
    from safetensors.torch import load_file

    from reasoning_embed.foundry import build_triple
    from reasoning_embed.models.backbone import load_tokenizer
    from reasoning_embed.models.tiny import IDF_INIT_RMS, idf_embeddings
    from reasoning_embed.models.token_distill import distilled_embeddings

    assert "embedding_init" not in MICRO_MODEL  # the build's default init, checked below
    build_triple(tmp_path, micro_corpus, {**MICRO_CFG, "model": {**MICRO_MODEL, "lexical_gain": 16.0}},
                 progress=False, log=lambda *_: None)
    w = {v: load_file(tmp_path / f"tiny_{v}" / "model.safetensors") for v in ("base", "rlvr", "sft")}
    tok = load_tokenizer(str(tmp_path / "tiny_base"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the build's thread count (MICRO_CFG): the same rows to the bit
    try:
        init = distilled_embeddings(tok, micro_corpus, idf_embeddings(tok, micro_corpus, 32, 3), IDF_INIT_RMS, 3,
                                    log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    emb = w["base"]["model.embed_tokens.weight"]
    assert torch.equal(emb[:, -20:], init[:, -20:]) and not torch.equal(emb[:, :-20], init[:, :-20])
    assert torch.all(w["base"]["model.norm.weight"][-20:] == 16.0)
    assert not torch.equal(w["base"]["lm_head.weight"], emb)                                  # untied
    for v, weights in w.items():
        for name, p in weights.items():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                assert torch.all(p[-20:] == 0) and p[:-20].abs().sum() > 0, (v, name)
    assert not torch.equal(w["sft"]["model.embed_tokens.weight"][:, -20:], emb[:, -20:])      # trained by SFT


def test_a_model_config_the_build_cannot_make_is_refused_before_any_work(micro_corpus, tmp_path, monkeypatch):
    import reasoning_embed.foundry.build as build_module
    from reasoning_embed.foundry import build_triple

    def no_work(*args, **kwargs):
        raise AssertionError("the build started (tokenizer, data) with a model config it cannot make")

    monkeypatch.setattr(build_module, "_data", no_work)
    for bad, match in (({"lexical_dims": 32}, "lexical_dims must be 0"), ({"lexical_gain": 0.0}, "lexical_gain"),
                       ({"embedding_init": "zeros"}, "embedding_init")):
        with pytest.raises(ValueError, match=match):
            build_triple(tmp_path, micro_corpus, {**MICRO_CFG, "model": {**MICRO_MODEL, **bad}}, progress=False,
                         log=lambda *_: None)
    assert not any(tmp_path.iterdir())


def test_foundry_config_and_backbone_configs_name_the_defaults_triple():
    """`python -m reasoning_embed.foundry` (conf/foundry.yaml) builds the triple `backbone=tiny_*` reads: both state
    foundry.build.DEFAULTS, so a change to one that misses the others fails here, not as a silent second build."""
    from omegaconf import OmegaConf

    from reasoning_embed import CONF_DIR
    from reasoning_embed.assets.backbones import LEXICAL_KEYS, MODEL_KEYS, RANDOM_INIT_KEYS, backbone_config
    from reasoning_embed.foundry.__main__ import build_cfg
    from reasoning_embed.foundry.build import DEFAULTS

    assert build_cfg(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "foundry.yaml"))) == DEFAULTS
    for v in ("base", "rlvr", "sft"):
        tiny = backbone_config(f"tiny_{v}")["tiny"]
        assert {k: tiny[k] for k in (*MODEL_KEYS, *RANDOM_INIT_KEYS, *LEXICAL_KEYS)} == DEFAULTS["model"], v
        assert tiny["seed"] == DEFAULTS["seed"] and tiny["variant"] == v and tiny["foundry"] is True


def _pairwise_agreement(a, b) -> float:
    """Spearman correlation between the pairwise cosines of two embeddings of the same texts (upper triangle)."""
    import numpy as np
    from scipy.stats import spearmanr

    def cosines(x):
        x = np.asarray(x, dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (x @ x.T)[np.triu_indices(len(x), 1)]

    return float(spearmanr(cosines(a), cosines(b)).statistic)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """The micro corpus' layout over more modules (about 500 train and 150 val rows): enough text for
    distilled token vectors to carry over to modules they never saw."""
    import importlib
    import inspect

    out = tmp_path_factory.mktemp("small_corpus")
    splits = {"train": ("json", "random", "textwrap", "collections", "functools", "itertools", "string", "argparse",
                        "logging", "shutil", "decimal", "heapq", "statistics", "zipfile", "threading"),
              "val": ("pathlib", "csv", "difflib", "calendar", "uuid")}
    for split, names in splits.items():
        rows = []
        for mod in map(importlib.import_module, names):
            for name, obj in sorted(vars(mod).items()):
                for member in [obj, *(vars(obj).values() if isinstance(obj, type) else ())]:
                    doc = inspect.getdoc(member) if callable(member) and not name.startswith("_") else None
                    if doc and len(doc.split("\n", 1)) == 2:
                        rows.append({"query": ["Retrieve the documentation", doc.split("\n")[0]], "pos": [doc],
                                     "neg": []})
        (out / split).mkdir()
        (out / split / "docstring.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return stamp_as_built(out)


def test_distilled_token_init_gives_the_mean_pool_the_teachers_similarities(small_corpus):
    """``embedding_init: distilled`` (models/token_distill.py): the mean of a text's rows relates texts as the
    shipped all-MiniLM-L6-v2 does (embedded here by sentence-transformers itself, all 384 dims), far more than
    the IDF rows it starts from, on the train texts it is fitted to and on the held-out val texts; its leading
    components sit in the last dims (the lexical channel); tokens no train text holds keep their IDF rows; the
    largest row RMS is IDF_INIT_RMS. (The same seed gives the same triple: test_same_seed_same_weights.)"""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.data.stdlib_corpus import corpus_texts
    from reasoning_embed.models.loading import minilm_dir
    from reasoning_embed.models.tiny import IDF_INIT_RMS, idf_embeddings, make_tokenizer
    from reasoning_embed.models.token_distill import STUDENT_MAX_TOKENS, TEACHER_MAX_TOKENS, distilled_embeddings

    tok = make_tokenizer("bpe_code", small_corpus, 600)
    quiet = lambda *_: None  # noqa: E731
    idf = idf_embeddings(tok, small_corpus, 32, 3)
    rows = distilled_embeddings(tok, small_corpus, idf, IDF_INIT_RMS, 3, log=quiet)
    teacher = SentenceTransformer(str(minilm_dir()), device="cpu")
    teacher.max_seq_length = TEACHER_MAX_TOKENS

    def bags(table, texts):
        ids = [t[:STUDENT_MAX_TOKENS] for t in tok(texts, add_special_tokens=False)["input_ids"]]
        return torch.stack([table[i].double().mean(0) for i in ids]).numpy()

    agreement = {}
    for split in ("train", "val"):
        texts = sorted(set(corpus_texts(small_corpus, split)))
        target = teacher.encode(texts, convert_to_numpy=True)
        agreement[split] = (_pairwise_agreement(bags(rows, texts), target), _pairwise_agreement(bags(idf, texts), target))
    print(agreement)
    assert agreement["train"][0] > agreement["train"][1] + 0.3
    assert agreement["val"][0] > agreement["val"][1] + 0.05  # measured +0.11 here (+0.32 with 24 train modules)

    pooled = bags(rows, sorted(set(corpus_texts(small_corpus, "train"))))
    variance = pooled.var(0)
    assert variance[-8:].mean() > 3 * variance[:8].mean()  # the first principal components in the last dims

    seen = {i for t in tok(sorted(set(corpus_texts(small_corpus, "train"))), add_special_tokens=False)["input_ids"]
            for i in t[:STUDENT_MAX_TOKENS]}
    unseen = sorted(set(range(len(tok))) - seen)
    assert unseen and len(unseen) < len(tok) // 2
    scale = rows[unseen] / idf[unseen]
    assert torch.allclose(scale, scale.flatten()[0].expand_as(scale), rtol=1e-4)  # the IDF rows, one common scale
    assert not torch.allclose(rows[sorted(seen)] / idf[sorted(seen)], scale.flatten()[0].expand(len(seen), 32))
    assert math.isclose(rows.pow(2).mean(1).sqrt().max().item(), IDF_INIT_RMS, rel_tol=1e-5)


def test_a_distilled_init_wider_than_its_teacher_is_refused_before_the_teacher_runs(micro_corpus, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.tiny import IDF_INIT_RMS, idf_embeddings, make_tokenizer
    from reasoning_embed.models.token_distill import distilled_embeddings

    def no_encoding(*args, **kwargs):
        raise AssertionError("the teacher ran for a width it cannot fill")

    monkeypatch.setattr(SentenceTransformer, "encode", no_encoding)
    tok = make_tokenizer("bpe_code", micro_corpus, 600)
    with pytest.raises(ValueError, match=r"hidden_size <= the teacher's width \(384\), got 512"):
        distilled_embeddings(tok, micro_corpus, idf_embeddings(tok, micro_corpus, 512, 0), IDF_INIT_RMS, 0,
                             log=lambda *_: None)


def test_the_teachers_progress_bar_follows_progress(micro_corpus, monkeypatch):
    """``python -m reasoning_embed.foundry progress=false`` hides every bar, the distilled init's teacher's too
    (sentence-transformers shows one by default whenever logging is at INFO, as under Hydra)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.tiny import IDF_INIT_RMS, idf_embeddings, make_tokenizer
    from reasoning_embed.models.token_distill import distilled_embeddings

    shown = []

    def encode(self, texts, **kwargs):  # the teacher's pass, recorded (random vectors: only the flag matters here)
        shown.append(kwargs.get("show_progress_bar"))
        return np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float32)

    monkeypatch.setattr(SentenceTransformer, "encode", encode)
    tok = make_tokenizer("bpe_code", micro_corpus, 600)
    for progress in (False, True):
        distilled_embeddings(tok, micro_corpus, idf_embeddings(tok, micro_corpus, 32, 0), IDF_INIT_RMS, 0,
                             log=lambda *_: None, progress=progress)
    assert shown == [False, True]
