"""One policy conditioned on several users (issue 16, train-ppo --users): the users'
turns by hand, each sample weighed by its user's weights, the prefix in the policy's
input and not in the reward model's, the errors; a tiny run end to end and
`generate --user` on what it saved."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.train.conftest import tiny_ppo_config

from alignloop.config import ConfigError
from alignloop.personal.conditioning import (
    CONDITIONING_FILE,
    assign_users,
    check_user_prefix,
    parse_users,
    prefix_for,
    with_user_prefix,
)
from alignloop.schema import Message
from alignloop.train.ppo import (
    HeadCombination,
    PPOConfig,
    _check_conditioning,
    build_models,
    make_rollout,
    make_score_fn,
    reward_combination,
    train_ppo,
)

# Two users of the personal model below; both names are words of the world's tokenizer.
USERS = {"anna": [1.0, 0.0], "ben": [0.25, 2.0]}
TEXTS = [
    ("the dog ran in the park . tl;dr :", " the dog ran"),
    ("it rained all day . tl;dr :", " rain , rain ."),
    ("the market was busy . tl;dr :", " busy"),
    ("we walked home late . tl;dr :", " we walked home ."),
]


@pytest.fixture(scope="module")
def world(make_ppo_world) -> dict:
    """A tiny random policy, 32 world prompts and a reward-function file."""
    return make_ppo_world(32)


@pytest.fixture(scope="module")
def personal_rm(two_head_rm, tmp_path_factory) -> Path:
    """The two-head reward model as a personal one: users anna (head a alone) and ben
    (a quarter of a, twice b), the default their mean."""
    folder = shutil.copytree(two_head_rm, tmp_path_factory.mktemp("personal") / "rm")
    saved = json.loads((folder / "config.json").read_text())
    saved["alignloop_personal"] = {"users": USERS, "default": [0.625, 1.0]}
    (folder / "config.json").write_text(json.dumps(saved))
    return folder


def make_config(world, out: Path, rm: Path, **overrides) -> PPOConfig:
    """The trainer tests' one-step run (`tiny_ppo_config`) for users anna and ben of
    the reward model `rm`, with no reward function."""
    options = {"reward_fn": None, "reward_model": str(rm), "users": ["anna,ben"],
               "batch_size": 4, "missing_eos_score": None}  # fmt: skip
    return tiny_ppo_config(world, out, **{**options, **overrides})


# --- by hand ---------------------------------------------------------------------------


def test_users_take_turns_in_seeded_shuffled_cycles():
    users = ["a", "b", "c"]
    run = assign_users(users, 30, seed=0)
    for cycle in range(10):  # balanced: every cycle of three holds each user once
        assert sorted(run[3 * cycle : 3 * cycle + 3]) == users
    assert assign_users(users, 7, seed=0, start=11) == run[11:18]  # resumed mid-cycle
    assert assign_users(users, 30, seed=0) == run  # seeded
    orders = {tuple(assign_users(users, 3, seed=s)) for s in range(20)}
    assert len(orders) > 1  # the order is shuffled, by the seed
    assert len({tuple(run[3 * c : 3 * c + 3]) for c in range(10)}) > 1  # and per cycle
    with pytest.raises(ValueError, match="no users"):
        assign_users([], 3, seed=0)


def test_users_and_keys_parse_and_bad_ones_name_the_flag():
    assert parse_users(["anna,ben"]) == {"anna": "anna", "ben": "ben"}
    assert parse_users(["short=anna", "long = ben"]) == {"short": "anna", "long": "ben"}
    with pytest.raises(ConfigError, match=r"^--users: 'a' is given twice"):
        parse_users(["a,b", "a"])
    with pytest.raises(ConfigError, match=r"^--users 'a,,b': expected NAME or NAME=KEY"):
        parse_users(["a,,b"])
    with pytest.raises(ConfigError, match=r"^--users: two users have the key 'x'"):
        parse_users(["a=x,b=x"])
    check_user_prefix("[{user}] ")
    for bad in ("no field", "{user} {name}", "{0}", "{user"):
        with pytest.raises(ConfigError, match=r"^--user-prefix .*"):
            check_user_prefix(bad)


def test_the_prefix_goes_before_a_text_and_into_a_conversations_first_user_turn():
    assert with_user_prefix("the dog ran . tl;dr :", "for anna : ") == (
        "for anna : the dog ran . tl;dr :"
    )
    conversation = [
        Message(role="system", content="be brief"),
        Message(role="user", content="hi"),
        Message(role="assistant", content="hello"),
        Message(role="user", content="more"),
    ]
    assert with_user_prefix(conversation, "for anna : ") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "for anna : hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"},
    ]
    assert conversation[1].content == "hi"  # the prompt itself is not changed


def test_each_sample_is_weighed_by_its_users_row_by_hand():
    scores = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0], [1.0, 2.0]])  # heads a, b
    table = torch.tensor(USERS["anna"]), torch.tensor(USERS["ben"])
    table = torch.stack(table)  # (2, 2)
    combination = HeadCombination(["a", "b"], table.mean(0), users=("anna", "ben"),
                                  user_weights=table)  # fmt: skip
    rows = combination.rows(["anna", "ben", "ben", "anna"])  # (4, 2)
    assert rows.tolist() == [[1.0, 0.0], [0.25, 2.0], [0.25, 2.0], [1.0, 0.0]]
    reward, gated = combination(scores, rows)
    # anna: a; ben: a / 4 + 2 b. Rows 0 and 3 are the same sample for the same user.
    assert reward.tolist() == [1.0, 0.75 - 2.0, 0.125, 1.0] and not gated.any()
    # a gate on b below 0: row 1 gets b alone, whoever its user
    gate = HeadCombination(["a", "b"], table.mean(0), 1, 0.0, ("anna", "ben"), table)
    assert gate(scores, rows)[0].tolist() == [1.0, -1.0, 0.125, 1.0]
    with pytest.raises(ValueError, match="no weights of user \\['cy'\\]"):
        combination.rows(["anna", "cy"])


def test_the_same_completion_scores_as_each_users_own(tmp_path, world, personal_rm):
    """Two users, the same prompts and completions: each sample's reward is its
    user's weights over the heads, bit for bit what --user NAME alone gives, and
    each user's figure averages their samples only."""
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(personal_rm, new_head=False)
    prompts, completions = map(list, zip(*TEXTS, *TEXTS, strict=True))  # 8: each text twice
    users = ["anna"] * 4 + ["ben"] * 4
    config = make_config(world, tmp_path, personal_rm)
    raw = make_score_fn(rm, None, config)(prompts, completions, users=users)
    alone = {
        name: make_score_fn(
            rm, None, make_config(world, tmp_path, personal_rm, users=[], user=name)
        )(prompts, completions)  # fmt: skip
        for name in USERS
    }
    assert torch.equal(raw["reward_model"][:4], alone["anna"]["reward_model"][:4])
    assert torch.equal(raw["reward_model"][4:], alone["ben"]["reward_model"][4:])
    heads = rm.head_scores(prompts[:4], completions[:4])  # (4, 2)
    a, b = heads.unbind(1)
    assert torch.allclose(raw["reward_model"][:4], a, atol=1e-6)  # anna: a
    assert torch.allclose(raw["reward_model"][4:], 0.25 * a + 2 * b, atol=1e-6)
    assert not torch.allclose(raw["reward_model"][:4], raw["reward_model"][4:])
    anna, ben = raw["score_user_anna"], raw["score_user_ben"]
    assert torch.equal(anna[:4], raw["reward_model"][:4]) and anna[4:].isnan().all()
    assert torch.equal(ben[4:], raw["reward_model"][4:]) and ben[:4].isnan().all()
    # one user alone: the --user path, bit for bit
    one = make_config(world, tmp_path, personal_rm, users=["ben"])
    only = make_score_fn(rm, None, one)(prompts, completions, users=["ben"] * 8)
    assert torch.equal(only["reward_model"], alone["ben"]["reward_model"])
    with pytest.raises(ValueError, match="each sample's user"):
        make_score_fn(rm, None, config)(prompts, completions)


def test_the_policy_reads_the_prefix_and_the_reward_model_does_not(tmp_path, world, personal_rm):
    from rich.console import Console

    from alignloop.io import read_records
    from alignloop.train.ppo import _conditioned_rows

    # the world's tokenizer knows no "for": a prefix of its words decodes as it was written
    config = make_config(
        world, tmp_path, personal_rm, samples_per_prompt=2, user_prefix="{user} : "
    )
    torch.manual_seed(0)
    policy, critic, reference, reward_model, tokenizer = build_models(config, Console(quiet=True))
    texts = [p.prompt for p in read_records(config.prompts, "prompt")][:4]
    users = ["ben", "anna", "anna", "ben"]
    run = type("Run", (), {"tokenizer": tokenizer, "config": config, "prompt_limit": 10**6})
    rows = _conditioned_rows(run, texts, users)
    seen = {}
    score_fn = make_score_fn(reward_model, None, config)

    def recording(prompts, completions, users):
        seen.update(prompts=prompts, users=users)
        return score_fn(prompts, completions, users=users)

    rollout, raw = make_rollout(policy, critic, reference, tokenizer, rows, texts, recording,
                                0.05, config, users=users)  # fmt: skip
    episode_users = [u for u in users for _ in range(2)]  # K = 2 samples of each prompt
    assert seen["users"] == rollout.users == episode_users
    assert seen["prompts"] == [t for t in texts for _ in range(2)]  # as the user wrote them
    assert rollout.prompts == [f"{u} : {t}" for t, u in zip(seen["prompts"], episode_users,
                                                                 strict=True)]  # fmt: skip
    policy_read = [  # the real prompt tokens of each episode, decoded
        tokenizer.decode(ids[mask.bool()])
        for ids, mask in zip(rollout.query_ids, rollout.query_mask, strict=True)
    ]
    assert policy_read == rollout.prompts
    # the scores are each user's reward of (the unprefixed prompt, the completion)
    for user in USERS:
        mine = [i for i, u in enumerate(episode_users) if u == user]
        expected = reward_model.score([seen["prompts"][i] for i in mine],
                                      [rollout.completions[i] for i in mine],
                                      weights=reward_model.user_weights(user))  # fmt: skip
        assert rollout.scores[mine].tolist() == pytest.approx(expected, abs=1e-6)
        read = reward_model.score([rollout.prompts[i] for i in mine],
                                  [rollout.completions[i] for i in mine],
                                  weights=reward_model.user_weights(user))  # fmt: skip
        assert read != pytest.approx(expected, abs=1e-6)  # what the prefix would have made
    picked = rollout.select(torch.tensor([3, 0]))
    assert picked.users == ["anna", "ben"]


# --- errors ----------------------------------------------------------------------------


def test_config_errors_name_the_flag(tmp_path, world, personal_rm, two_head_rm):
    def config(**options):
        return make_config(world, tmp_path, personal_rm, **options)

    with pytest.raises(ConfigError, match=r"^--user and --users: give one of"):
        config(user="anna")
    with pytest.raises(ConfigError, match=r"^--reward and --users: give one of"):
        config(reward=["a=1"])
    with pytest.raises(ConfigError, match=r"^--users weighs the heads of a reward model: give "
                       r"--reward-model"):  # fmt: skip
        config(reward_model=None, reward_fn=world["fn"])
    with pytest.raises(ConfigError, match=r"^--user-prefix is the prefix of --users'"):
        config(users=[], user="anna", user_prefix="[{user}] ")
    with pytest.raises(ConfigError, match=r"^--user-prefix 'for you': the template must hold"):
        config(user_prefix="for you")
    with pytest.raises(ConfigError, match=r"^--users: 'anna' is given twice"):
        config(users=["anna", "anna"])

    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(personal_rm, new_head=False)
    with pytest.raises(ConfigError, match=r"^--users cy: not a user of the reward model \(its "
                       r"users: anna, ben\)"):  # fmt: skip
        reward_combination(config(users=["anna,cy"]), rm)
    plain = RewardModel.from_pretrained(two_head_rm, new_head=False)
    with pytest.raises(ConfigError, match=r"^--users: the reward model .* has no users"):
        reward_combination(make_config(world, tmp_path, two_head_rm), plain)
    with pytest.raises(ConfigError, match=r"^--safety-head c: .* has no such head"):
        reward_combination(config(safety_head="c"), rm)
    combination = reward_combination(config(safety_head="b"), rm)
    assert combination.gate == 1 and combination.users == ("anna", "ben")
    assert combination.weights.tolist() == [0.625, 1.0]  # the users' mean: the critic's start


def test_users_the_tokenizer_cannot_tell_apart_are_refused(tmp_path, world, personal_rm):
    """The world's tokenizer knows no "ann" nor "bob": their prefixes read alike."""
    from alignloop.models import load_tokenizer

    tokenizer = load_tokenizer(world["policy"])
    texts = [p for p, _ in TEXTS]
    config = make_config(world, tmp_path, personal_rm, users=["ann,bob"])
    with pytest.raises(ConfigError, match=r"^--users ann,bob: the policy's tokenizer reads their "
                       r"prefixes 'for ann : ' and 'for bob : ' as the same tokens .* --users "
                       r"NAME=KEY"):  # fmt: skip
        _check_conditioning(config, tokenizer, texts, [[0]] * 4, 100)
    keyed = make_config(world, tmp_path, personal_rm, users=["ann=anna,bob=ben"])
    _check_conditioning(keyed, tokenizer, texts, [[0]] * 4, 100)  # keys it knows: fine
    rows = [tokenizer(t)["input_ids"] for t in texts]
    longest = max(map(len, rows))
    with pytest.warns(UserWarning, match=r"1 of 4 prompts leave no room for a user's prefix"):
        _check_conditioning(keyed, tokenizer, texts, rows, longest + 1)  # the prefix is 3


# --- end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_conditioned_run_then_generate_for_each_user(tmp_path, world, personal_rm, capsys):
    """train-ppo --users anna,ben for 3 steps of 4 prompts: each step gives each user
    two prompts, each user's mean score is logged, every logged episode's score is its
    user's reward of the prompt without the prefix, and the policy remembers its
    prefix; `generate --user ben` then samples what the policy does on ben's prefix."""
    from alignloop.cli import main
    from alignloop.generate import generate_completions
    from alignloop.io import read_records
    from alignloop.models import RewardModel, load_policy

    out = tmp_path / "ppo"
    final = train_ppo(make_config(world, out, personal_rm, max_steps=3, log_rollouts=True,
                                  user_prefix="{user} : "))  # fmt: skip
    episodes = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(episodes) == 12
    for step in (1, 2, 3):
        assert Counter(e["user"] for e in episodes if e["step"] == step) == {"anna": 2, "ben": 2}
    rm = RewardModel.from_pretrained(personal_rm, new_head=False)
    for user in USERS:
        mine = [e for e in episodes if e["user"] == user]
        assert all(e["prompt"].startswith(f"{user} : ") for e in mine)
        prompts = [e["prompt"].removeprefix(f"{user} : ") for e in mine]
        expected = rm.score(prompts, [e["completion"] for e in mine],
                            weights=rm.user_weights(user))  # fmt: skip
        assert [e["score"] for e in mine] == pytest.approx(expected, abs=1e-6)
        last = [e["score"] for e in mine if e["step"] == 3]
        assert final[f"ppo/score_user_{user}"] == pytest.approx(sum(last) / 2, abs=1e-6)
    saved = json.loads((out / CONDITIONING_FILE).read_text())
    assert saved == {"user_prefix": "{user} : ", "users": {"anna": "anna", "ben": "ben"}}

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(world["prompts"].read_text().splitlines(keepends=True)[:3]))
    completions = tmp_path / "ben.jsonl"
    args = ["generate", "--policy", str(out), "--prompts", str(prompts), "--out",
            str(completions), "--k", "2", "--max-new-tokens", "6", "--user", "ben"]  # fmt: skip
    assert main(args) == 0
    records = read_records(completions, "completion")
    assert {r.policy for r in records} == {f"{out}@ben"}
    policy, tokenizer = load_policy(out)
    policy.eval()
    torch.manual_seed(0)
    by_hand = generate_completions(policy, tokenizer, read_records(prompts, "prompt"), k=2,
                                   max_new_tokens=6, prefix="ben : ")  # fmt: skip
    assert [r.completion for r in records] == [r.completion for r in by_hand]
    # another user's prefix samples otherwise (the same seed)
    torch.manual_seed(0)
    anna = generate_completions(policy, tokenizer, read_records(prompts, "prompt"), k=2,
                                max_new_tokens=6, prefix="anna : ")  # fmt: skip
    assert [r.completion for r in anna] != [r.completion for r in by_hand]

    capsys.readouterr()
    assert main([*args[:-1], "cy"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: --user cy: the policy was tuned for anna, ben"
    )
    assert main([*args[:2], str(world["policy"]), *args[3:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --user ben: ") and "is not a conditioned policy" in err
    # a template given: any policy, any user
    assert main([*args[:2], str(world["policy"]), *args[3:], "--user-prefix", "to {user} : "]) == 0


def test_generate_options_and_the_saved_prefix(tmp_path):
    from alignloop.generate_config import GenerateConfig
    from alignloop.personal.conditioning import save_conditioning

    base = {"policy": "p", "prompts": tmp_path / "p.jsonl", "out": tmp_path / "o.jsonl"}
    with pytest.raises(ConfigError, match=r"^--user-prefix is a user's prefix: give --user"):
        GenerateConfig(**base, user_prefix="{user} : ")
    with pytest.raises(ConfigError, match=r"^--user-prefix '{name}': the template must hold"):
        GenerateConfig(**base, user="ann", user_prefix="{name}")
    policy, adapter = tmp_path / "policy", tmp_path / "adapter"
    policy.mkdir()
    adapter.mkdir()
    save_conditioning(policy, "for {user} : ", {"short": "anna"})
    assert prefix_for("short", None, policy) == "for anna : "  # the key, not the name
    assert prefix_for("short", adapter, policy, template="[{user}] ") == "[anna] "
    assert prefix_for("new", policy, template="[{user}] ") == "[new] "
    save_conditioning(adapter, "by {user} : ", {"long": "ben"})
    assert prefix_for("long", adapter, policy) == "by ben : "  # the adapter's own first
    (adapter / CONDITIONING_FILE).write_text('{"users": ["long"]}')
    with pytest.raises(ConfigError, match=r"alignloop_conditioning.json: expected"):
        prefix_for("long", adapter, policy)
