"""The export is a sentence-transformers model that embeds exactly like the framework, at the settings users
train with: unequal query and passage limits, every length up to them, both instruction-boundary rules."""

import json

import pytest
import torch

INSTRUCTION = "Given a summary, retrieve its code"
WORDS = ("Return the sum of two numbers, then open a file: read it, close it again carefully and "
         "report 3 errors per line in utf-8 text").split()


def _perturbed(encoder):
    with torch.no_grad():  # move off the init so the check is not trivially symmetric
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return encoder


def _every_length(tokenizer, limit: int, prompt: str = "") -> list[str]:
    """Texts whose token counts (with the prompt) run from 1 past the prompt to beyond ``limit``."""
    texts, k = [], 1
    while k <= len(WORDS) * 3:
        text = " ".join((WORDS * 3)[:k])
        texts.append(text)
        if len(tokenizer.hf(prompt + text, add_special_tokens=False)["input_ids"]) > limit + 4:
            break
        k += 1
    return texts


@pytest.mark.parametrize("tokenizer, boundary", [("bpe", "prompt_tokens"), ("bpe", "offsets"),
                                                  ("bpe_code", "prompt_tokens"), ("bpe_code", "offsets")])
def test_export_matches_the_framework_with_unequal_lengths(request, tmp_path, tokenizer, boundary):
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.models.export import export_encoder, read_export_settings

    micro_backbone = request.getfixturevalue("micro_code_backbone" if tokenizer == "bpe_code" else "micro_backbone")
    enc = _perturbed(build_encoder({"path": str(micro_backbone), "name": "micro"}, max_query_length=40,
                                   max_passage_length=24, prompt_boundary=boundary))
    out = export_encoder(enc, tmp_path / "model", instruction=INSTRUCTION, card={"backbone": "micro"})
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    settings = read_export_settings(out)
    assert settings["max_query_length"] == 40 and settings["max_passage_length"] == 24
    assert settings["prompt_boundary"] == boundary and settings["query_template"] == enc.tokenizer.query_template
    # stock modules unless they would embed differently: the offsets rule, or bpe_code's tokenizer pipeline
    # (transformers 5 loads any qwen2-config tokenizer as Qwen2Tokenizer and rebuilds Qwen's pre-tokeniser)
    shipped = json.loads((out / "reasoning_embed.json").read_text())["st_modules"]
    assert shipped is (boundary == "offsets" or tokenizer == "bpe_code")
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=shipped)
    prompt = enc.tokenizer.prompt(INSTRUCTION)
    assert st.prompts["query"] == prompt
    queries = _every_length(enc.tokenizer, 40, prompt) + ["sort", "x", "3 errors", "(a, b)"]
    # past the passage limit and the query limit; an empty passage and one of whitespace only (bpe_code has no
    # token for it) embed as the zero vector on both sides
    passages = _every_length(enc.tokenizer, 40) + ["", " \n "]
    ours_q, ours_p = enc.encode(queries, INSTRUCTION), enc.encode(passages)
    assert ours_p[-2].abs().max() == 0 and ours_p[:-2].norm(dim=1).min() > 0.99
    torch.testing.assert_close(st.encode_query(queries, convert_to_tensor=True), ours_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.encode_document(passages, convert_to_tensor=True), ours_p, atol=1e-5, rtol=1e-5)
    # a plain encode with the query prompt truncates at the longer limit: equal for every query within its limit
    plain = st.encode(queries, prompt_name="query", convert_to_tensor=True)
    within = [i for i, q in enumerate(queries) if len(enc.tokenizer.hf(prompt + q)["input_ids"]) <= 40]
    torch.testing.assert_close(plain[within], ours_q[within], atol=1e-5, rtol=1e-5)
    # the prompt matters: without excluding it, embeddings would differ
    assert (ours_q - enc.encode(queries, None)).abs().max() > 1e-3
    card = (out / "README.md").read_text()
    assert "micro" in card and "encode_query" in card and f"boundary rule `{boundary}`" in card


def test_boundary_rules_and_the_empty_text_rule(micro_backbone):
    """prompt_tokens drops a first word merged into the prompt's trailing space; offsets keeps it. A query with
    no text token left embeds as the zero vector under both rules (sentence-transformers' rule)."""
    from reasoning_embed.models.encoder import build_encoder

    built = {b: build_encoder({"path": str(micro_backbone), "name": "micro"}, max_query_length=64,
                              max_passage_length=64, prompt_boundary=b) for b in ("prompt_tokens", "offsets")}
    tok = built["prompt_tokens"].tokenizer
    prompt = tok.prompt(INSTRUCTION)
    merged = next(w for w in WORDS if len(tok.hf(prompt + w)["input_ids"]) == len(tok.hf(prompt)["input_ids"]))
    plen = tok.prompt_length(prompt)
    assert tok.prompt_lengths([prompt], [merged]) == [plen]  # the merged word is counted as prompt ...
    assert built["offsets"].tokenizer.prompt_lengths([prompt], [merged]) == [plen - 1]  # ... or as text
    emb = {b: e.encode([merged, ""], INSTRUCTION) for b, e in built.items()}
    assert emb["prompt_tokens"][0].abs().max() == 0 and emb["offsets"][0].norm() == pytest.approx(1.0)
    assert emb["prompt_tokens"][1].abs().max() == 0 and emb["offsets"][1].abs().max() == 0
    assert built["offsets"].tokenizer.prompt_lengths(["", ""], ["a b", ""]) == [0, 0]  # passages: no prompt


def test_trained_run_export_matches_the_framework_on_held_out_data(train_cfg, corpus_dir, tmp_path):
    """A trained run with unequal lengths: SentenceTransformer(run/model) == the framework's evaluation
    embeddings for the held-out queries (with their instructions) and passages."""
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.data.jsonl import read_jsonl
    from reasoning_embed.models.loading import load_encoder
    from reasoning_embed.train import train

    cfg = train_cfg("trainer.max_steps=2", "encoder.max_query_length=64", "encoder.max_passage_length=40",
                    "validate_before_training=false", "data.val_max_queries=8")
    train(cfg)
    run = tmp_path / "run"
    ours = load_encoder(str(run))
    assert (ours.tokenizer.max_query_length, ours.tokenizer.max_passage_length) == (64, 40)
    st = SentenceTransformer(str(run / "model"), device="cpu")
    rows = [r for path in sorted((corpus_dir / "val").glob("*.jsonl")) for r in read_jsonl(path)[0]][:200]
    for instruction in sorted({r.instruction for r in rows}):
        qs = [r.query for r in rows if r.instruction == instruction]
        torch.testing.assert_close(st.encode_query(qs, prompt=ours.tokenizer.prompt(instruction), convert_to_tensor=True),
                                   ours.encode(qs, instruction), atol=1e-5, rtol=1e-5)
    passages = [r.pos[0] for r in rows]
    torch.testing.assert_close(st.encode_document(passages, convert_to_tensor=True), ours.encode(passages),
                               atol=1e-5, rtol=1e-5)
