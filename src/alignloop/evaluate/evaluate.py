"""`alignloop eval`: sample a policy and a reference policy, then measure them.

    completions = sample(policy), sample(reference)      # same prompts, same seed
    kl          = sequence_kl(policy, reference)         # on the policy's completions
    figures     = evaluate_completions(...)              # reward, judge, length, toxicity,
                                                         # win rates
    out/eval.json, completions_policy.jsonl, completions_reference.jsonl, scores.jsonl,
    report_data.json, report.html

`evaluate_completions` is the library half: it scores completions that already exist
(the demo samples once and evaluates many ways), under a reward model, a judge
`judge(prompt, completion) -> float` (the demo's gold judge; later, people), and a
toxicity classifier. The prompts' `reference` texts, when present, take part as one
more "policy" named `prompt_reference`.

Win rates pair completions of the same prompt in order (the j-th sample of A with the
j-th of B), and each completion of A with its prompt's reference text; the judge's
score decides, equal scores tie (counted half).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignloop.chat import is_conversation, prompt_display, require_template
from alignloop.config import ConfigError
from alignloop.evaluate.eval_config import EvalConfig
from alignloop.evaluate.metrics import length_stats, summary_stats, win_rate
from alignloop.evaluate.toxicity import ToxicityClassifier, load_toxicity, toxicity_stats
from alignloop.schema import Completion, Prompt, SchemaError

__all__ = [
    "PROMPT_REFERENCE",
    "EvalConfig",
    "Evaluation",
    "evaluate",
    "evaluate_completions",
    "load_judge",
    "report_data",
]

Judge = Callable[[Prompt, str], float]
PROMPT_REFERENCE = "prompt_reference"  # the prompts' own reference texts, as a policy
REWARD_MODEL = "reward_model"  # the judge name of reward-model win rates
SCORE_COLUMNS = ("id", "prompt_id", "policy", "reward", "kl", "toxicity", "toxic")


@contextlib.contextmanager
def _bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """The project's progress bar on stderr (stdout stays clean for JSON); yields
    advance(n)."""
    from alignloop.progress import progress

    bar, task = progress(total, description, stderr=True)
    with bar:
        yield lambda n: bar.update(task, advance=n)


def load_judge(spec: str) -> Judge:
    """'package.module:function' or 'path/to/file.py:function' -> the function."""
    from alignloop.config import load_callable

    return load_callable(spec, "--judge")


# --- scoring completions that exist ----------------------------------------------------


@dataclass
class Evaluation:
    """What `evaluate_completions` measured.

    policies: name -> figures {"n", "reward_mean", "reward_std", "<judge>_mean",
      "<judge>_std", "kl_mean", "kl_median", "toxicity_rate", "toxicity_score_mean",
      "length": length_stats(...)}; figures without their input are absent.
    win_rates: "<a>_vs_<b>/<judge>" -> win_rate(...) plus "a", "b", "judge".
    rows: name -> per completion {"id", "prompt_id", "reward", "<judge>", "kl",
      "toxicity", "toxic"} (the scores that exist), in the completions' order.
    completions: name -> the completions scored."""

    n_prompts: int
    policies: dict[str, dict[str, Any]]
    win_rates: dict[str, dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]
    completions: dict[str, list[Completion]] = field(repr=False)
    judge_name: str | None = None
    toxicity_name: str | None = None

    def _score_keys(self) -> list[str]:
        """The per-completion scores, in the order tables show them."""
        return ["reward", *([self.judge_name] if self.judge_name else []), "kl", "toxicity"]

    def _figure_keys(self) -> list[str]:
        return [f"{k}_mean" for k in self._score_keys()[:-1]] + ["toxicity_rate"]

    def metrics(self) -> dict[str, float | int | None]:
        """The headline figures, flat and namespaced (`eval/...`)."""
        flat: dict[str, float | int | None] = {"eval/n_prompts": self.n_prompts}
        for name, figures in self.policies.items():
            for key in self._figure_keys():
                if key in figures:
                    flat[f"eval/{name}/{key}"] = figures[key]
            for unit, stats in figures["length"].items():
                if isinstance(stats, dict):
                    flat[f"eval/{name}/length_{unit}_mean"] = stats["mean"]
        for key, wr in self.win_rates.items():
            flat[f"eval/win_rate/{key}"] = wr["rate"]
        return flat

    def summary(self) -> dict[str, Any]:
        """JSON of everything but the per-completion rows."""
        return {
            "n_prompts": self.n_prompts,
            "judge": self.judge_name,
            "toxicity": self.toxicity_name,
            "metrics": self.metrics(),
            "policies": self.policies,
            "win_rates": self.win_rates,
        }

    def before_after(self) -> dict[str, dict[str, float | None]]:
        """Per policy, the flat figures the report compares (its `before_after`)."""
        table: dict[str, dict[str, float | None]] = {}
        for name, figures in self.policies.items():
            row = {k: figures[k] for k in self._figure_keys() if k in figures}
            for unit, stats in figures["length"].items():
                if isinstance(stats, dict):
                    row[f"length_{unit}_mean"] = stats["mean"]
            table[name] = row
        return table

    def side_by_side(self, prompts: Sequence[Prompt], n: int) -> list[dict[str, Any]]:
        """The first completion of every policy for the first `n` prompts, with scores."""
        first: dict[str, dict[str, tuple[Completion, dict]]] = {}
        for name, completions in self.completions.items():
            by_prompt = first.setdefault(name, {})
            for c, row in zip(completions, self.rows[name], strict=True):
                by_prompt.setdefault(c.prompt_id, (c, row))
        table = []
        for p in prompts[:n]:
            entry: dict[str, Any] = {"prompt": prompt_display(p.prompt)}
            scores: dict[str, dict[str, float]] = {}
            for name, by_prompt in first.items():
                if p.id not in by_prompt:
                    continue
                c, row = by_prompt[p.id]
                entry[name] = c.completion
                scores[name] = {k: row[k] for k in self._score_keys() if k in row}
            entry["scores"] = scores
            table.append(entry)
        return table


def _group(completions: Sequence[Completion]) -> dict[str, list[int]]:
    """prompt id -> indices of its completions, in order."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(completions):
        groups.setdefault(c.prompt_id, []).append(i)
    return groups


def _paired(
    prompts: Sequence[Prompt],
    a: Sequence[Completion],
    b: Sequence[Completion],
) -> list[tuple[int, int]]:
    """(index in a, index in b) pairs: the j-th completion of A for a prompt with the
    j-th of B; when B has one completion for a prompt (a reference), all of A's
    completions meet it."""
    ga, gb = _group(a), _group(b)
    pairs = []
    for p in prompts:
        ia, ib = ga.get(p.id, []), gb.get(p.id, [])
        if len(ib) == 1:
            ib = ib * len(ia)
        pairs.extend(zip(ia, ib, strict=False))
    return pairs


def _reference_completions(prompts: Sequence[Prompt]) -> list[Completion]:
    return [
        Completion(
            id=f"{p.id}-reference", prompt_id=p.id, completion=p.reference, policy=PROMPT_REFERENCE
        )
        for p in prompts
        if p.reference is not None
    ]


def evaluate_completions(
    prompts: Sequence[Prompt],
    completions_by_policy: Mapping[str, Sequence[Completion]],
    *,
    reward_model=None,
    judge: Judge | None = None,
    judge_name: str = "gold",
    toxicity: ToxicityClassifier | str | None = "words",
    baseline: str | None = None,
    with_references: bool = True,
    kl: Mapping[str, Sequence[float]] | None = None,
    tokenizer=None,
    reward_batch_size: int = 32,
    reward_max_length: int = 1024,
) -> Evaluation:
    """Score every policy's completions and compare them.

    reward_model: an `alignloop.models.RewardModel` (normalized rewards), or None.
    judge: `judge(prompt, completion) -> float` (higher is better), or None.
    toxicity: a classifier, a `load_toxicity` spec, or None for no toxicity figures.
    baseline: the policy every other one is compared with (win rates under the
      reward model and the judge); None: no policy-vs-policy win rates.
    with_references: score the prompts' reference texts too (as `prompt_reference`)
      and give every policy's win rate against them.
    kl: policy -> per-completion KL to the reference policy (`sequence_kl`), aligned
      with that policy's completions.
    tokenizer: counts tokens in the length figures when given."""
    by_id = {p.id: p for p in prompts}
    completions = {name: list(cs) for name, cs in completions_by_policy.items()}
    _check_inputs(by_id, completions, judge, judge_name, baseline, kl)
    if with_references and (refs := _reference_completions(prompts)):
        completions = {PROMPT_REFERENCE: refs, **completions}  # the "before" of every table
    if isinstance(toxicity, str):
        toxicity = load_toxicity(toxicity)

    rows = {
        name: _score(
            name,
            cs,
            by_id,
            reward_model=reward_model,
            judge=judge,
            judge_name=judge_name,
            kl=kl[name] if kl is not None and name in kl else None,
            toxicity=toxicity,
            reward_batch_size=reward_batch_size,
            reward_max_length=reward_max_length,
        )  # fmt: skip
        for name, cs in completions.items()
    }
    policies = {
        name: _figures(
            rows[name], [c.completion for c in completions[name]], judge_name, toxicity, tokenizer
        )
        for name in completions
    }
    judges = ([REWARD_MODEL] if reward_model is not None else []) + (
        [judge_name] if judge is not None else []
    )
    return Evaluation(
        n_prompts=len(prompts),
        policies=policies,
        win_rates=_win_rates(prompts, completions, rows, judges, judge_name, baseline),
        rows=rows,
        completions=completions,
        judge_name=judge_name if judge is not None else None,
        toxicity_name=getattr(toxicity, "name", None),
    )


def _check_inputs(by_id, completions, judge, judge_name, baseline, kl) -> None:
    """Policy names, the judge's name, the baseline, prompt ids and KL lengths."""
    for reserved in (PROMPT_REFERENCE, "prompt", "scores"):
        if reserved in completions:
            raise ValueError(f"{reserved!r} cannot name a policy (it is taken); rename it")
    if judge is not None and judge_name in SCORE_COLUMNS:
        raise ValueError(f"judge_name {judge_name!r} is taken by another score; rename it")
    if baseline is not None and baseline not in completions:
        raise ValueError(f"baseline {baseline!r} is not one of the policies {list(completions)}")
    for name, cs in completions.items():
        unknown = [c for c in cs if c.prompt_id not in by_id]
        if unknown:
            raise SchemaError(
                f"{unknown[0].where}: field 'prompt_id': no prompt with id "
                f"{unknown[0].prompt_id!r} ({len(unknown)} completions of {name!r})"
            )
        if kl is not None and name in kl and len(kl[name]) != len(cs):
            raise ValueError(f"kl[{name!r}] has {len(kl[name])} values for {len(cs)} completions")


def _score(
    name: str,
    completions: Sequence[Completion],
    by_id: Mapping[str, Prompt],
    *,
    reward_model,
    judge: Judge | None,
    judge_name: str,
    kl: Sequence[float] | None,
    toxicity: ToxicityClassifier | None,
    reward_batch_size: int,
    reward_max_length: int,
) -> list[dict[str, Any]]:
    """One policy's rows: per completion its id, prompt id and every score there is."""
    rows: list[dict[str, Any]] = [{"id": c.id, "prompt_id": c.prompt_id} for c in completions]
    texts = [c.completion for c in completions]
    columns: dict[str, list[float]] = {}
    if reward_model is not None:
        prompt_texts = [by_id[c.prompt_id].prompt for c in completions]
        columns["reward"] = _score_rm(
            reward_model, prompt_texts, texts, name, reward_batch_size, reward_max_length
        )
    if judge is not None:
        columns[judge_name] = _score_judge(
            judge, judge_name, [by_id[c.prompt_id] for c in completions], texts
        )
    if kl is not None:
        columns["kl"] = [float(v) for v in kl]
    if toxicity is not None:
        columns["toxicity"] = list(toxicity.scores(texts))
    for column, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[column] = value
    if toxicity is not None:
        for row in rows:
            row["toxic"] = row["toxicity"] >= toxicity.threshold
    return rows


def _win_rates(prompts, completions, rows, judges, judge_name, baseline) -> dict[str, dict]:
    """Every policy against the baseline and against the prompts' references, under
    each judge (the reward model's column is "reward")."""
    columns_of = {REWARD_MODEL: "reward", judge_name: judge_name}
    win_rates: dict[str, dict[str, Any]] = {}
    opponents = [baseline] if baseline is not None else []
    if PROMPT_REFERENCE in completions:
        opponents.append(PROMPT_REFERENCE)
    for b in opponents:
        for a in completions:
            if a in (b, PROMPT_REFERENCE):
                continue
            pairs = _paired(prompts, completions[a], completions[b])
            for j in judges:
                column = columns_of[j]
                wr = win_rate(
                    [rows[a][i][column] for i, _ in pairs], [rows[b][k][column] for _, k in pairs]
                )
                win_rates[f"{a}_vs_{b}/{j}"] = {"a": a, "b": b, "judge": j, **wr}
    return win_rates


def _score_rm(reward_model, prompts, texts, name, batch_size, max_length) -> list[float]:
    scores: list[float] = []
    chunk = batch_size * 4
    with _bar(len(texts), f"reward model: {name}") as advance:
        for start in range(0, len(texts), chunk):
            scores += reward_model.score(
                prompts[start : start + chunk],
                texts[start : start + chunk],
                batch_size=batch_size,
                max_length=max_length,
            )
            advance(len(texts[start : start + chunk]))
    return scores


def _score_judge(judge: Judge, judge_name, prompts: Sequence[Prompt], texts) -> list[float]:
    scores = []
    for p, text in zip(prompts, texts, strict=True):
        try:
            scores.append(float(judge(p, text)))
        except Exception as e:  # the user's judge: say which prompt it failed on
            raise ConfigError(f"judge {judge_name!r} failed on prompt {p.id!r}: {e}") from e
    return scores


def _figures(rows, texts, judge_name, toxicity, tokenizer) -> dict[str, Any]:
    figures: dict[str, Any] = {"n": len(rows)}
    for column, name in (("reward", "reward"), (judge_name, judge_name), ("kl", "kl")):
        if rows and column in rows[0]:
            values = [r[column] for r in rows]
            stats = summary_stats(values)
            figures[f"{name}_mean"] = stats["mean"]
            if name == "kl":
                figures["kl_median"] = stats["median"]
            else:
                n = len(values)
                mean = stats["mean"]
                var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
                figures[f"{name}_std"] = var**0.5
    if toxicity is not None:
        stats = toxicity_stats([r["toxicity"] for r in rows], toxicity.threshold)
        figures["toxicity_rate"] = stats["rate"]
        figures["toxicity_score_mean"] = stats["score_mean"]
    figures["length"] = length_stats(texts, tokenizer)
    return figures


# --- alignloop eval -----------------------------------------------------------------------


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_policy(name_or_path: str, flag: str, dtype, options=None, adapter=None, adapter_flag=""):
    from alignloop.models import load_policy

    try:
        return load_policy(
            name_or_path, dtype=dtype, options=options, what=flag, adapter=adapter,
            adapter_what=adapter_flag,
        )  # fmt: skip
    except OSError as e:  # no such directory, no weights, a hub id without network
        raise FileNotFoundError(f"{flag} {name_or_path}: cannot load a causal LM: {e}") from e


def _sample_all(model, tokenizer, prompts, config: EvalConfig, name: str, prompt_limit: int):
    import torch

    from alignloop.generate import generate_completions

    torch.manual_seed(config.seed)  # each policy samples from the same seed
    with _bar(len(prompts), f"sampling: {name}") as advance:
        return generate_completions(
            model,
            tokenizer,
            prompts,
            k=config.k,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            max_prompt_length=prompt_limit,
            batch_size=config.batch_size,
            policy_name=name,
            progress=advance,
        )


def evaluate(config: EvalConfig, *, judge: Judge | None = None) -> dict[str, Any]:
    """Sample `config.policy` (and `config.reference`) on the prompts, measure them,
    write out/eval.json, out/completions_policy.jsonl (and _reference), out/scores.jsonl,
    out/report_data.json and out/report.html. `judge` overrides `config.judge`.
    Returns eval.json's content."""
    import torch

    from alignloop.io import read_prompts

    prompts = read_prompts(config.prompts)
    if not prompts:
        raise SchemaError(f"{config.prompts}: --prompts holds no prompts")
    prompts = prompts[: config.max_prompts] if config.max_prompts else prompts
    if judge is None and config.judge is not None:
        judge = load_judge(config.judge)
    device = _device(config.device)
    dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
    toxicity = load_toxicity(
        config.toxicity,
        threshold=config.toxicity_threshold,
        label=config.toxicity_label,
        batch_size=config.reward_batch_size,
        device=device,
    )
    _check_reward_template(config, prompts)
    completions, kl, tokenizer = _sample_policies(config, prompts, device, dtype)
    evaluation = evaluate_completions(
        prompts,
        completions,
        reward_model=_load_reward_model(config, device),
        judge=judge,
        judge_name=config.judge_name,
        toxicity=toxicity,
        baseline=config.reference_name if config.reference is not None else None,
        kl=kl,
        tokenizer=tokenizer,
        reward_batch_size=config.reward_batch_size,
        reward_max_length=config.reward_max_length,
    )
    return _write_results(config, evaluation, prompts)


def _sample_policies(config: EvalConfig, prompts: Sequence[Prompt], device, dtype):
    """(completions by policy name, the reference first; {policy name: per-completion
    KL to the reference} or None; the policy's tokenizer): both policies sampled from
    the same seed, their completions written to out/completions_*.jsonl. Their memory
    is free on return, before the reward model loads."""
    import torch

    from alignloop.evaluate.metrics import sequence_kl
    from alignloop.io import write_records
    from alignloop.models import prompt_token_limit

    out = Path(config.out)
    policy, tokenizer = _load_policy(
        config.policy, "--policy", dtype, config, config.adapter, "--adapter"
    )
    require_template(tokenizer, prompts, config.policy)
    policy.to(device).eval()
    prompt_limit = prompt_token_limit(policy, config.max_prompt_length, config.max_new_tokens)
    ours = _sample_all(policy, tokenizer, prompts, config, config.policy_name, prompt_limit)
    write_records(out / "completions_policy.jsonl", ours)
    completions = {config.policy_name: ours}
    kl = None
    if config.reference is not None:
        reference, ref_tokenizer = _load_policy(
            config.reference, "--reference", dtype, config, config.reference_adapter,
            "--reference-adapter",
        )  # fmt: skip
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"--reference {config.reference} and --policy {config.policy} have different "
                "vocabularies: the KL between them is not defined token by token"
            )
        reference.to(device).eval()
        ref_completions = _sample_all(
            reference, tokenizer, prompts, config, config.reference_name, prompt_limit
        )
        write_records(out / "completions_reference.jsonl", ref_completions)
        # The reference first: it is the "before" of every table.
        completions = {config.reference_name: ref_completions, **completions}
        by_id = {p.id: p for p in prompts}
        with _bar(len(ours), "KL to the reference") as advance:
            values = sequence_kl(
                policy,
                reference,
                tokenizer,
                [by_id[c.prompt_id].prompt for c in ours],
                [c.completion for c in ours],
                temperature=config.temperature,
                batch_size=config.batch_size,
                max_prompt_length=prompt_limit,
                max_new_tokens=config.max_new_tokens,
                progress=advance,
            )
        kl = {config.policy_name: values}
        del reference
    del policy
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return completions, kl, tokenizer


def _check_reward_template(config: EvalConfig, prompts: Sequence[Prompt]) -> None:
    """The reward model renders conversations with its own chat template; it loads
    after sampling, so its tokenizer is checked before (file:line of the first)."""
    from alignloop.models import load_tokenizer

    if config.reward_model is not None and any(is_conversation(p.prompt) for p in prompts):
        tokenizer = load_tokenizer(config.reward_model, options=config, what="--reward-model")
        require_template(tokenizer, prompts, config.reward_model)


def _load_reward_model(config: EvalConfig, device):
    """`config.reward_model` in eval mode on `device`, or None."""
    from alignloop.models import RewardModel

    if config.reward_model is None:
        return None
    reward_model = RewardModel.from_pretrained(
        config.reward_model, options=config, what="--reward-model", new_head=config.new_head
    )
    reward_model.requires_grad_(False)
    return reward_model.to(device).eval()


def _write_results(config: EvalConfig, evaluation: Evaluation, prompts) -> dict[str, Any]:
    """out/eval.json (returned), scores.jsonl, report_data.json and report.html."""
    from alignloop.io import atomic_write, write_json

    out = Path(config.out)
    config_json = {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
    result = {"config": config_json, **evaluation.summary()}
    write_json(out / "eval.json", result)
    with atomic_write(out / "scores.jsonl") as f:
        for name, rows in evaluation.rows.items():
            for row in rows:
                f.write(json.dumps({"policy": name, **row}, ensure_ascii=False) + "\n")
    data = report_data(evaluation, prompts, config=config_json, examples=config.examples)
    write_json(out / "report_data.json", data)  # `alignloop report` can merge it with more
    if config.report:
        from alignloop.evaluate.report import render_report

        render_report(data, out / "report.html")
    return result


def _named(config: Mapping[str, Any], key: str) -> str:
    """An eval config's policy or reference as given, "BASE+ADAPTER" with an adapter."""
    adapter = config.get("adapter" if key == "policy" else f"{key}_adapter")
    return f"{config[key]}+{adapter}" if adapter else str(config[key])


def report_data(
    evaluation: Evaluation,
    prompts: Sequence[Prompt],
    *,
    config: Mapping[str, Any] | None = None,
    examples: int = 20,
    title: str = "alignloop eval",
    subtitle: str | None = None,
) -> dict[str, Any]:
    """The sections of `render_report` that an evaluation fills."""
    if subtitle is None and config is not None:
        against = f" against {_named(config, 'reference')}" if config.get("reference") else ""
        subtitle = f"{_named(config, 'policy')}{against} on {evaluation.n_prompts} prompts"
    data: dict[str, Any] = {
        "title": title,
        "metrics": evaluation.metrics(),
        "win_rates": evaluation.win_rates,
        "before_after": evaluation.before_after(),
        "side_by_side": evaluation.side_by_side(prompts, examples),
    }
    if subtitle:
        data["subtitle"] = subtitle
    if config is not None:
        data["config"] = dict(config)
    return data


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
