"""The export is a sentence-transformers model that embeds exactly like the framework."""

import json

import torch


def test_export_loads_in_sentence_transformers_with_equal_embeddings(micro_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    # sentence-transformers has one max_seq_length (the export takes the larger of the two)
    micro_encoder.tokenizer.max_query_length = micro_encoder.tokenizer.max_passage_length = 48

    from reasoning_embed.models.export import export_encoder

    with torch.no_grad():  # move off the init so the check is not trivially symmetric
        for p in micro_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_encoder(micro_encoder, tmp_path / "model")
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    st = SentenceTransformer(str(out), device="cpu")
    queries = ["Return the sum of two numbers.", "Open a file, read it, and close it again (carefully)."]
    passages = ["def add(a, b): return a + b", "with open(p) as f:\n    return f.read()", "x"]
    inst = "Given a summary, retrieve its code"
    ours_q = micro_encoder.encode(queries, inst)
    ours_p = micro_encoder.encode(passages)
    st_q = st.encode(queries, prompt=micro_encoder.tokenizer.prompt(inst), convert_to_tensor=True)
    st_p = st.encode(passages, convert_to_tensor=True)
    torch.testing.assert_close(ours_q, st_q.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_p, st_p.cpu(), atol=1e-5, rtol=1e-5)
    # the prompt matters: without excluding it, embeddings would differ
    assert (micro_encoder.encode(queries, inst) - micro_encoder.encode(queries, None)).abs().max() > 1e-3
