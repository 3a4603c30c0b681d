"""One converter from settings to typed configs: stage configs and the trainer's agree."""

from __future__ import annotations

import pytest
from songmill.annotate.music import MusicConfig
from songmill.annotate.settings import ConfigError, build_config, coerce
from songmill.train.config import TrainConfig, TrainConfigError


def test_the_same_value_converts_the_same_way_for_a_stage_and_for_the_trainer():
    # integral numbers only for ints: 3.0 -> 3, 3.5 refused by both (it was truncated to 3 for stages)
    assert TrainConfig().updated({"batch_size": 3.0}).batch_size == 3
    assert build_config(MusicConfig, "music", {"batch_size": 3.0}).batch_size == 3
    with pytest.raises(TrainConfigError, match="batch_size"):
        TrainConfig().updated({"batch_size": 3.5})
    with pytest.raises(ConfigError, match=r"\[music\] batch_size"):
        build_config(MusicConfig, "music", {"batch_size": 3.5})
    # a number where a str is wanted (`--set x.device=0` parses as an int) is its text for both
    assert TrainConfig().updated({"device": 0}).device == "0"
    assert build_config(MusicConfig, "music", {"device": 0}).device == "0"
    with pytest.raises(ConfigError, match="unknown setting"):
        build_config(MusicConfig, "music", {"bach_size": 4})
    with pytest.raises(TrainConfigError, match="unknown setting"):
        TrainConfig().updated({"bach_size": 4})


def test_coerce_follows_the_type_hint():
    assert coerce("yes", bool) is True and coerce("0", bool) is False
    assert coerce(None, int | None) is None
    assert coerce("a, b", list[str]) == ["a", "b"]
    assert coerce([1, 2], tuple[float, float]) == (1.0, 2.0)
    assert coerce([1, 2, 3], tuple[int, ...]) == (1, 2, 3)
    for value, hint in [
        ("maybe", bool),
        (True, int),
        ([1], str),
        ([1, 2, 3], tuple[float, float]),
        (float("inf"), int),
    ]:
        with pytest.raises(ValueError):
            coerce(value, hint)
