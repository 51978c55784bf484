"""One source of encoder defaults: conf/encoder/default.yaml, read by build_encoder and the one loader."""

import pytest

from reasoning_embed.models.defaults import ENCODER_KEYS, encoder_defaults


def test_defaults_are_the_training_config():
    from hydra import compose, initialize_config_dir

    from reasoning_embed import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train")
    assert encoder_defaults() == {k: cfg.encoder[k] for k in ENCODER_KEYS}


def test_tokenizer_constants_agree():
    from reasoning_embed.models.text_tokenizer import DEFAULT_PROMPT_BOUNDARY, DEFAULT_QUERY_TEMPLATE

    d = encoder_defaults()
    assert (d["query_template"], d["prompt_boundary"]) == (DEFAULT_QUERY_TEMPLATE, DEFAULT_PROMPT_BOUNDARY)


def test_build_encoder_takes_the_defaults_and_refuses_unknown_settings(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    enc = build_encoder({"path": str(micro_backbone)})
    d = encoder_defaults()
    assert (enc.pooling, enc.normalize, enc.attention) == (d["pooling"], d["normalize"], d["attention"])
    assert (enc.tokenizer.max_query_length, enc.tokenizer.query_template) == (d["max_query_length"],
                                                                              d["query_template"])
    with pytest.raises(TypeError, match="max_length"):
        build_encoder({"path": str(micro_backbone)}, max_length=12)
