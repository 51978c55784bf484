"""The one pooling-name map agrees with sentence-transformers' own Pooling module (the oracle)."""

import pytest

from reasoning_embed.models.pooling import POOLING_MODES, ST_POOLING_FLAG, ST_POOLING_MODE, pooling_from_st


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_every_pooling_round_trips_through_sentence_transformers(mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    config = Pooling(8, ST_POOLING_MODE[mode]).get_config_dict()
    assert pooling_from_st(config) == mode
    # configs saved by sentence-transformers before 6 carry one boolean flag per mode instead
    legacy = {flag: ours == mode for ours, flag in ST_POOLING_FLAG.items()} | {"pooling_mode_max_tokens": False}
    assert pooling_from_st(legacy) == mode


def test_unknown_pooling_is_none():
    assert pooling_from_st({"pooling_mode": "max"}) is None and pooling_from_st({}) is None
