"""Reward models with several named outputs (issue 16): the heads' names, scores per
head, their combination by a user's weights, saving so that plain transformers reads
every head the same, and the parsing of `--reward NAME=W` and weights files."""

from __future__ import annotations

import json

import pytest

from alignloop.config import ConfigError
from alignloop.models import parse_head_weights, read_user_weights

# --- NAME=W and weights files -------------------------------------------------------------


def test_parse_head_weights_keeps_the_order_given():
    got = parse_head_weights(["helpfulness=1.0", " harmlessness = 0.5", "x=-2"], "--reward")
    assert got == {"helpfulness": 1.0, "harmlessness": 0.5, "x": -2.0}
    assert list(got) == ["helpfulness", "harmlessness", "x"]
    assert parse_head_weights([], "--reward") == {}


@pytest.mark.parametrize(
    "value, message",
    [
        ("helpfulness", "--reward 'helpfulness': expected NAME=WEIGHT"),
        ("=1", "--reward '=1': expected NAME=WEIGHT"),
        ("a=much", "--reward 'a=much': the weight 'much' is not a number"),
        ("a=nan", "--reward 'a=nan': the weight 'nan' is not a number"),
    ],
)
def test_parse_head_weights_errors_name_the_flag_and_item(value, message):
    with pytest.raises(ConfigError) as e:
        parse_head_weights([value], "--reward")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_head_given_twice_is_an_error():
    with pytest.raises(ConfigError, match="--reward 'a=2': 'a' is given twice"):
        parse_head_weights(["a=1", "a=2"], "--reward")


def test_read_user_weights(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"user": "ann", "weights": {"feature_0": 1, "feature_1": -0.5},
                                "n_comparisons": 20}))  # fmt: skip
    assert read_user_weights(path) == {"feature_0": 1.0, "feature_1": -0.5}


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such file"),
        ("{not json", "not a JSON weights file"),
        (json.dumps({"user": "ann"}), 'expected {"user": NAME, "weights": {HEAD: WEIGHT, ...}}'),
        (json.dumps([1, 2]), "expected {"),
        (json.dumps({"weights": {"a": "big"}}), "weights['a']: 'big' is not a number"),
        (json.dumps({"weights": {"a": True}}), "weights['a']: True is not a number"),
    ],
)
def test_a_bad_weights_file_is_one_line_naming_flag_and_file(tmp_path, text, message):
    path = tmp_path / "w.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_user_weights(path)
    assert str(e.value).startswith(f"--user-weights {path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)
