"""The one encode loop: token-length grouping changes nothing but the batching."""

import pytest
import torch

from reasoning_embed.models.encode import encode, encode_layers, length_batches, model_inputs, pad_rows

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["def f(x):\n    return x + 1", "a", "The quick brown fox jumps over the lazy dog. " * 3,
         "import os", "while True: pass", "zz " * 20]


def _one_by_one(encoder, texts, instructions=None, is_query=False):
    """The reference: every text alone (no padding at all), through the TextTokenizer's own batching."""
    tok = encoder.tokenizer
    rows = []
    with torch.no_grad():
        for i, t in enumerate(texts):
            feats = tok.queries([t], [instructions[i]]) if is_query else tok.passages([t])
            rows.append(encoder(**feats)[0])
    return torch.stack(rows)


def test_length_batches_longest_first_by_tokens():
    assert list(length_batches([3, 9, 1, 9, 5], 2)) == [[1, 3], [4, 0], [2]]


def test_pad_rows_left_and_right():
    ids, mask, offs = pad_rows([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]] and offs == [0, 2]
    ids, mask, offs = pad_rows([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and offs == [0, 0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_by_one(micro_encoder, side):
    micro_encoder.tokenizer.hf.padding_side = side
    instr = ["Find code", "Retrieve a passage that answers", None, "Find code", "x", "Retrieve"]
    q = encode(micro_encoder, TEXTS, instr, is_query=True, batch_size=4)
    p = micro_encoder.encode(TEXTS, None, batch_size=4)
    torch.testing.assert_close(q, _one_by_one(micro_encoder, TEXTS, instr, True), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(p, _one_by_one(micro_encoder, TEXTS), atol=2e-5, rtol=1e-4)


def test_batches_are_grouped_by_token_count_not_characters(micro_encoder):
    ids, plens = model_inputs(micro_encoder, TEXTS, None)
    assert plens == [0] * len(TEXTS)
    widths = []
    micro_encoder.forward_orig = micro_encoder.forward

    def spy(input_ids, attention_mask, prompt_length=None):
        widths.append(input_ids.shape[1])
        return micro_encoder.forward_orig(input_ids, attention_mask, prompt_length)

    micro_encoder.forward = spy
    micro_encoder.encode(TEXTS, None, batch_size=2)
    lengths = sorted((len(x) for x in ids), reverse=True)
    assert widths == [lengths[0], lengths[2], lengths[4]]


def test_empty_text_reads_one_token_kept_out_of_the_mean(micro_encoder):
    """No NaN from a row with no attended token, and no arbitrary vector either: the zero vector, as the
    sentence-transformers export embeds an empty text."""
    ids, prompt_lengths = model_inputs(micro_encoder, ["", "hello"], None)
    assert ids[0] == [micro_encoder.tokenizer.hf.eos_token_id] and prompt_lengths == [1, 0]
    emb = micro_encoder.encode(["", "hello"], None)
    assert torch.isfinite(emb).all() and emb[0].abs().max() == 0 and emb[1].norm() == pytest.approx(1.0)


def test_layers_are_mean_pooled_hidden_states(micro_encoder):
    layers = encode_layers(micro_encoder, TEXTS[:3], batch_size=2)
    assert sorted(layers) == ["layer_0", "layer_1", "layer_2"]
    feats = micro_encoder.tokenizer.passages([TEXTS[2]])
    with torch.no_grad():
        hs = micro_encoder.hidden_states(feats["input_ids"], feats["attention_mask"])
    torch.testing.assert_close(layers["layer_2"][2], hs[2][0].float().mean(0), atol=2e-5, rtol=1e-4)
