"""Pooling: padding side does not matter; instruction tokens are attended but not averaged."""

import pytest
import torch

from reasoning_embed.models.pooling import last_token_index, mean_pool_mask, pool


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 3]
    assert last_token_index(left).tolist() == [3, 3]


def test_mean_mask_excludes_prompt_with_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pooled = mean_pool_mask(mask, torch.tensor([2, 2]))
    assert pooled.long().tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]]


@pytest.mark.parametrize("mode", ["mean", "last_token", "first"])
def test_encoder_equal_for_left_and_right_padding(micro_encoder, mode):
    micro_encoder.pooling = mode
    texts = ["a short one", "a considerably longer text with many more tokens in it than the other"]
    tok = micro_encoder.tokenizer
    out = {}
    for side in ("left", "right"):
        tok.hf.padding_side = side
        out[side] = micro_encoder.encode(texts, "Retrieve things")
    tok.hf.padding_side = "right"
    torch.testing.assert_close(out["left"], out["right"], atol=1e-5, rtol=1e-5)


def test_mean_pool_equals_hand_mean_over_text_tokens(micro_encoder):
    tok = micro_encoder.tokenizer
    feats = tok.queries(["find the answer"], "Retrieve")
    n_prompt = int(feats["prompt_length"][0])
    assert n_prompt == len(tok.hf(tok.prompt("Retrieve"), add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        hidden = micro_encoder.backbone(input_ids=feats["input_ids"],
                                        attention_mask=feats["attention_mask"]).last_hidden_state[0]
        micro_encoder.normalize = False
        got = micro_encoder(**feats)[0]
    torch.testing.assert_close(got, hidden[n_prompt:].mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, hidden.mean(0), atol=1e-4)  # the prompt really was excluded


def test_query_format_and_no_special_tokens(micro_encoder):
    tok = micro_encoder.tokenizer
    assert tok.prompt("Do X") == "Instruct: Do X\nQuery: "
    ids = tok.passages(["hello world"])["input_ids"][0].tolist()
    assert ids == tok.hf("hello world", add_special_tokens=False)["input_ids"]
    assert not set(ids) & set(tok.hf.all_special_ids)


def test_unknown_pooling_mode_is_refused():
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")
