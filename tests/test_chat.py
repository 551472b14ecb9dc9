"""Conversations and chat templates (issue 15): `alignloop.chat` renders prompts for
a tokenizer, and every stage (SFT, generate, the reward model, score, PPO) reads
conversational files through it; no second BOS anywhere."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from tests.conftest import CHAT_TEMPLATE, STORIES, build_chat_tokenizer

from alignloop import chat
from alignloop.io import read_records, write_records
from alignloop.schema import Completion, Message, Prompt, SchemaError, join_text

QUESTION = [{"role": "user", "content": "What color is the sky?"}]
SYSTEM = [{"role": "system", "content": "You are a helpful assistant."}, *QUESTION]


@pytest.fixture(scope="module")
def tokenizer():
    return build_chat_tokenizer()


@pytest.fixture
def fresh_warning(monkeypatch):
    """The double-BOS warning is given once per process: let this test see it."""
    monkeypatch.setattr(chat, "_bos_warned", False)


def test_a_text_prompt_is_used_as_it_is(tokenizer):
    text = "The sky is"
    assert chat.render_prompt(tokenizer, text) is text  # no template on plain text
    assert chat.render_text(tokenizer, text, "blue.") == join_text(text, "blue.")


def test_a_conversation_goes_through_the_template(tokenizer):
    assert chat.render_prompt(tokenizer, QUESTION) == (
        "<s><|user|>What color is the sky?<|assistant|>"
    )
    as_messages = tuple(Message(**m) for m in SYSTEM)
    full = chat.render_text(tokenizer, as_messages, "It is blue.")
    assert full == (
        "<s><|system|>You are a helpful assistant.<|user|>What color is the sky?"
        "<|assistant|>It is blue.</s>"
    )
    # a comparison's side as a list of assistant messages renders the same
    turn = (Message(role="assistant", content="It is blue."),)
    assert chat.render_text(tokenizer, as_messages, turn) == full
    assert full.startswith(chat.render_prompt(tokenizer, as_messages))


def test_a_text_prompt_takes_no_messages(tokenizer):
    with pytest.raises(SchemaError, match="text prompt takes a text completion"):
        chat.render_text(tokenizer, "The sky is", ({"role": "assistant", "content": "x"},))


def test_sft_ids_of_a_text_prompt_are_as_before(tokenizer):
    from alignloop.models import continuation_ids

    prompt, target = "The sky is", "blue."
    prompt_ids, target_ids = chat.sft_ids(tokenizer, prompt, target)
    assert prompt_ids == tokenizer(prompt, add_special_tokens=True)["input_ids"]
    assert target_ids == [*continuation_ids(tokenizer, prompt, target), tokenizer.eos_token_id]


def test_sft_ids_of_a_conversation_are_the_assistant_turn(tokenizer):
    prompt_ids, target_ids = chat.sft_ids(tokenizer, QUESTION, "It is blue.")
    rendered = chat.render_prompt(tokenizer, QUESTION)
    assert prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert prompt_ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not two
    assert target_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target_ids[:-1]) == "It is blue."
    # prompt + target is exactly the templated conversation, tokenized once
    full = chat.render_text(tokenizer, QUESTION, "It is blue.")
    assert prompt_ids + target_ids == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_sft_ids_append_an_eos_when_the_template_ends_the_turn_otherwise():
    tokenizer = build_chat_tokenizer(CHAT_TEMPLATE.replace("{{ eos_token }}", "\n"))
    _, target_ids = chat.sft_ids(tokenizer, QUESTION, "It is blue.")
    assert target_ids.count(tokenizer.eos_token_id) == 1
    assert target_ids[-1] == tokenizer.eos_token_id


def test_no_second_bos_on_a_rendered_text(tokenizer, fresh_warning):
    from alignloop.models import tokenize_keep_end

    rendered = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert tokenizer(rendered)["input_ids"][:2] == [2, 2]  # the bug: [BOS, BOS, ...]
    once = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    plain = tokenizer("The sky is")["input_ids"]
    assert chat.encode(tokenizer, [rendered, "The sky is"]) == [once, plain]
    rows, cut = tokenize_keep_end(tokenizer, [rendered], 512)
    assert rows == [once] and cut == 0
    rows, cut = tokenize_keep_end(tokenizer, [rendered], 5)  # cut: still one BOS, first
    assert cut == 1 and rows[0][0] == 2 and rows[0].count(2) == 1 and len(rows[0]) == 5
    rows, _ = tokenize_keep_end(tokenizer, [rendered], 512, append_eos=True)
    assert rows == [[*once, tokenizer.eos_token_id]]


def test_no_second_bos_in_sft_and_a_warning_once(tokenizer, fresh_warning):
    from alignloop.train.sft import tokenize_example

    rendered = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    with pytest.warns(UserWarning, match="already starts with the BOS token"):
        ids, n_prompt = tokenize_example(tokenizer, rendered, "It is blue.", 64)
    assert ids[:2] != [2, 2] and ids.count(2) == 1
    assert ids[:n_prompt] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second text warns no more
        chat.render_prompt(tokenizer, rendered)


def test_no_second_bos_on_the_story_models_tokenizer(fresh_warning):
    if not STORIES.exists():
        pytest.skip(f"{STORIES} is absent (it lives in ../shared, outside the repository)")
    from alignloop.models import load_tokenizer, tokenize_keep_end
    from alignloop.train.sft import tokenize_example

    tokenizer = load_tokenizer(STORIES)  # adds BOS, no pad token, no template
    assert tokenizer.chat_template is None
    plain = tokenizer("Once upon a time")["input_ids"]
    assert tokenizer("<s>Once upon a time")["input_ids"] == [1, *plain]  # the bug
    with pytest.warns(UserWarning, match="BOS"):
        ids, n = tokenize_example(tokenizer, "<s>Once upon a time", "there was a cat", 64)
    assert ids[:n] == plain
    assert tokenize_keep_end(tokenizer, ["<s>Once upon a time"], 64)[0] == [plain]
    tokenizer.chat_template = CHAT_TEMPLATE  # a template that writes "<s>" itself
    assert chat.encode(tokenizer, [chat.render_prompt(tokenizer, QUESTION)])[0][:2] != [1, 1]


def test_set_chat_template_from_a_file(tmp_path):
    from alignloop.config import ConfigError
    from alignloop.models import load_tokenizer

    tokenizer = build_chat_tokenizer(None)
    path = tmp_path / "template.jinja"
    path.write_text(CHAT_TEMPLATE)
    chat.set_chat_template(tokenizer, path)
    assert chat.render_prompt(tokenizer, QUESTION).endswith("<|assistant|>")
    tokenizer.save_pretrained(tmp_path / "tok")  # saved with the tokenizer
    assert load_tokenizer(tmp_path / "tok").chat_template == CHAT_TEMPLATE
    with pytest.raises(ConfigError, match="--chat-template .*missing.jinja"):
        chat.set_chat_template(tokenizer, tmp_path / "missing.jinja")


def _conversational_prompts(path: Path, n: int = 8) -> Path:
    colors = ["blue", "green"]
    prompts = [
        Prompt(id=f"q{i}", prompt=tuple(Message(**m) for m in QUESTION) if i % 2 else
               (Message(role="user", content=f"Say something kind {i}."),),
               reference=f"It is {colors[i % 2]}.")
        for i in range(n)
    ]  # fmt: skip
    write_records(path, prompts)
    return path


def test_a_conversation_without_a_template_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_records(path, [Prompt(id="t", prompt="The sky is"), Prompt(id="c", prompt=QUESTION)])
    prompts = read_records(path, "prompt")
    with pytest.raises(SchemaError, match=rf"^{path}:2: the prompt is a conversation, but the "
                       r"tokenizer of m has no chat template.*--chat-template FILE"):  # fmt: skip
        chat.require_template(build_chat_tokenizer(None), prompts, "m")
    chat.require_template(build_chat_tokenizer(), prompts, "m")  # a template: fine
    chat.require_template(build_chat_tokenizer(None), prompts[:1], "m")  # text only: fine


def test_sft_on_conversations(chat_models, tmp_path):
    from alignloop.models import load_policy
    from alignloop.train.sft import SFTConfig, train_sft

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl")
    config = SFTConfig(model=str(chat_models["policy"]), prompts=prompts, out=tmp_path / "sft",
                       max_steps=3, batch_size=4, lr=1e-2, eval_fraction=0.25,
                       mixed_precision="no")  # fmt: skip
    before, _ = load_policy(chat_models["policy"])
    metrics = train_sft(config)
    assert metrics
    after, tokenizer = load_policy(tmp_path / "sft")
    assert tokenizer.chat_template == CHAT_TEMPLATE  # the tuned model keeps its template
    changed = [
        not (a == b).all() for a, b in zip(after.parameters(), before.parameters(), strict=True)
    ]
    assert all(changed)


def test_sft_refuses_conversations_without_a_template(chat_models, tmp_path):
    from alignloop.train.sft import SFTConfig, train_sft

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl")
    config = SFTConfig(model=str(chat_models["plain"]), prompts=prompts, out=tmp_path / "sft",
                       max_steps=1, eval_fraction=0.0, mixed_precision="no")  # fmt: skip
    with pytest.raises(SchemaError, match=rf"{prompts}:\d+: the prompt is a conversation"):
        train_sft(config)
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()  # before any training


def test_generate_renders_conversations(chat_models, tmp_path):
    import torch

    from alignloop.generate import generate_completions, generate_file
    from alignloop.models import load_policy

    prompts_path = _conversational_prompts(tmp_path / "prompts.jsonl", n=4)
    out = tmp_path / "completions.jsonl"
    assert generate_file(chat_models["policy"], prompts_path, out, k=2, max_new_tokens=5,
                         seed=3, show_progress=False) == 8  # fmt: skip
    records = read_records(out, "completion")
    # the same as sampling the rendered texts: the policy read the templated prompt
    policy, tokenizer = load_policy(chat_models["policy"])
    rendered = [
        Prompt(id=p.id, prompt=chat.render_prompt(tokenizer, p.prompt))
        for p in read_records(prompts_path, "prompt")
    ]
    torch.manual_seed(3)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rendered texts start with BOS: the warning's case
        again = generate_completions(policy, tokenizer, rendered, k=2, max_new_tokens=5,
                                     policy_name=str(chat_models["policy"]))  # fmt: skip
    assert [c.completion for c in records] == [c.completion for c in again]
    with pytest.raises(SchemaError, match=rf"{prompts_path}:1: the prompt is a conversation"):
        generate_file(chat_models["plain"], prompts_path, tmp_path / "x.jsonl",
                      show_progress=False)  # fmt: skip


def _conversational_pairs(path: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        rows.append({
            "prompt": [{"role": "user", "content": f"What color is the sky? ({i})"}],
            "chosen": [{"role": "assistant", "content": "It is blue."}],
            "rejected": [{"role": "assistant", "content": "It is green."}],
        })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_rm_eval_rm_and_score_on_conversations(chat_models, tmp_path, capsys):
    from alignloop.cli import main
    from alignloop.models import RewardModel
    from alignloop.train.reward import RewardConfig, train_reward_model

    pairs = _conversational_pairs(tmp_path / "pairs.jsonl")
    config = RewardConfig(model=str(chat_models["rm"]), data=pairs, out=tmp_path / "rm",
                          max_steps=4, batch_size=4, lr=1e-2, eval_fraction=0.25,
                          norm_samples=8, mixed_precision="no")  # fmt: skip
    train_reward_model(config)
    assert main(["eval-rm", "--model", str(tmp_path / "rm"), "--data", str(pairs)]) == 0
    assert "accuracy" in capsys.readouterr().out

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl", n=2)
    completions = [Completion(id=f"q{i}-a", prompt_id=f"q{i}", completion="It is blue.")
                   for i in range(2)]  # fmt: skip
    write_records(tmp_path / "completions.jsonl", completions)
    out = tmp_path / "rewards.jsonl"
    assert main(["score", "--model", str(tmp_path / "rm"), "--data",
                 str(tmp_path / "completions.jsonl"), "--prompts", str(prompts),
                 "--out", str(out)]) == 0  # fmt: skip
    rewards = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    # the reward model read the templated conversation, as it was trained on
    rm = RewardModel.from_pretrained(tmp_path / "rm")
    convs = [p.prompt for p in read_records(prompts, "prompt")]
    texts = [chat.render_text(rm.tokenizer, c, "It is blue.") for c in convs]
    assert texts[0].endswith("<|assistant|>It is blue.</s>")
    as_text = rm.score(texts, [""] * 2)  # the rendered texts, given as text prompts
    assert rewards == pytest.approx(as_text)


def test_ppo_on_conversations(chat_models, tmp_path):
    from alignloop.train.ppo import PPOConfig, train_ppo

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl")
    seen = tmp_path / "seen.jsonl"
    fn = tmp_path / "rewards.py"
    fn.write_text(
        "import json\n"
        "def spy(prompts, completions):\n"
        f"    with open({str(seen)!r}, 'a') as f:\n"
        "        for p in prompts: f.write(json.dumps(p) + '\\n')\n"
        "    return [float(len(c)) for c in completions]\n"
    )
    config = PPOConfig(policy=str(chat_models["policy"]), prompts=prompts, out=tmp_path / "ppo",
                       reward_model=str(chat_models["rm"]), reward_fn=f"{fn}:spy",
                       max_steps=2, batch_size=4, minibatch_size=2, ppo_epochs=1,
                       max_new_tokens=4, mixed_precision="no", sample_every=0,
                       missing_eos_score=None)  # fmt: skip
    final = train_ppo(config)
    assert final
    given = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(given) == 8
    assert all(p.startswith("<s><|") and p.endswith("<|assistant|>") for p in given)
    metrics = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text()
               .splitlines()]  # fmt: skip
    assert len([m for m in metrics if "ppo/kl" in m]) == 2


def test_the_chat_template_flag_sets_a_template(chat_models, tmp_path, capsys):
    from alignloop.cli import main

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl", n=2)
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    args = ["generate", "--policy", str(chat_models["plain"]), "--prompts", str(prompts),
            "--out", str(tmp_path / "c.jsonl"), "--k", "1", "--max-new-tokens", "3"]  # fmt: skip
    assert main(args) == 2  # no template: one line naming the file and the line
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"{prompts}:1: the prompt is a conversation" in errors[0]
    assert main([*args, "--chat-template", str(template)]) == 0
    assert len(read_records(tmp_path / "c.jsonl", "completion")) == 2
    assert main(["train-sft", "--model", str(chat_models["plain"]), "--prompts", str(prompts),
                 "--out", str(tmp_path / "sft"), "--max-steps", "1", "--eval-fraction", "0",
                 "--mixed-precision", "no", "--chat-template", str(template)]) == 0  # fmt: skip
    from alignloop.models import load_tokenizer

    assert load_tokenizer(tmp_path / "sft").chat_template == CHAT_TEMPLATE  # saved with it


def test_completion_ids_are_the_tokens_the_policy_wrote(tokenizer):
    from alignloop.models import continuation_ids

    # no space is put between the template's generation prompt and the completion
    ids = chat.completion_ids(tokenizer, QUESTION, "It is blue.")
    assert ids == tokenizer("It is blue.", add_special_tokens=False)["input_ids"]
    rendered = chat.render_prompt(tokenizer, QUESTION)
    assert ids != continuation_ids(tokenizer, rendered, "It is blue.")  # join_text's space
    assert chat.completion_ids(tokenizer, "The sky is", "blue.") == continuation_ids(
        tokenizer, "The sky is", "blue."
    )  # a text prompt: as before


def test_eval_on_conversations(chat_models, tmp_path):
    from alignloop.evaluate import EvalConfig, evaluate

    prompts = _conversational_prompts(tmp_path / "prompts.jsonl", n=4)
    config = EvalConfig(policy=str(chat_models["policy"]), prompts=prompts, out=tmp_path / "ev",
                        reference=str(chat_models["policy"]), reward_model=str(chat_models["rm"]),
                        max_new_tokens=4, toxicity="words", report=False)  # fmt: skip
    result = evaluate(config)
    assert result["policies"]["policy"]["kl_mean"] == pytest.approx(0.0, abs=1e-6)  # itself
    data = json.loads((tmp_path / "ev" / "report_data.json").read_text())
    shown = json.dumps(data)
    assert "user: What color is the sky?" in shown  # conversations shown as their turns
    with pytest.raises(SchemaError, match=rf"{prompts}:1: the prompt is a conversation"):
        evaluate(EvalConfig(policy=str(chat_models["plain"]), prompts=prompts,
                            out=tmp_path / "x", report=False))  # fmt: skip


def test_no_warning_where_the_tokenizer_adds_no_bos(fresh_warning):
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()  # like GPT-2's: adds no special tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert chat.render_prompt(tokenizer, "<s> the cat") == "<s> the cat"
    assert chat.encode(tokenizer, ["<s> the cat"]) == [tokenizer("<s> the cat")["input_ids"]]


def test_sft_prompts_drop_the_eos_a_tokenizer_appends():
    from tokenizers import processors

    tokenizer = build_chat_tokenizer()
    specials = [("<s>", tokenizer.bos_token_id), ("</s>", tokenizer.eos_token_id)]
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=specials
    )  # like T5's or a Llama tokenizer with add_eos_token: <s> text </s>
    eos = tokenizer.eos_token_id
    for prompt in ("The sky is", QUESTION):
        prompt_ids, target_ids = chat.sft_ids(tokenizer, prompt, "It is blue.")
        assert prompt_ids[-1] != eos and prompt_ids.count(tokenizer.bos_token_id) == 1
        assert target_ids.count(eos) == 1 and target_ids[-1] == eos


def test_importing_chat_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, alignloop.chat; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_reward_model_without_a_template_is_refused_before_sampling(chat_models, tmp_path):
    from alignloop.evaluate import EvalConfig, evaluate
    from alignloop.models import RewardModel
    from alignloop.train.ppo import PPOConfig, train_ppo

    rm = RewardModel.from_pretrained(chat_models["rm"])
    rm.tokenizer.chat_template = None
    plain_rm = rm.save_pretrained(tmp_path / "plain-rm")
    prompts = _conversational_prompts(tmp_path / "prompts.jsonl", n=4)
    match = rf"{prompts}:1: the prompt is a conversation, but the tokenizer of {plain_rm}"
    with pytest.raises(SchemaError, match=match):
        evaluate(EvalConfig(policy=str(chat_models["policy"]), prompts=prompts,
                            out=tmp_path / "ev", reward_model=str(plain_rm),
                            report=False))  # fmt: skip
    assert not (tmp_path / "ev" / "completions_policy.jsonl").exists()
    with pytest.raises(SchemaError, match=match):
        train_ppo(PPOConfig(policy=str(chat_models["policy"]), prompts=prompts,
                            out=tmp_path / "ppo", reward_model=str(plain_rm), batch_size=4,
                            minibatch_size=2, mixed_precision="no"))  # fmt: skip
