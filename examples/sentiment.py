"""A real sentiment scorer as a reward, a judge and a scripted labeler: VADER.

VADER (Hutto & Gilbert 2014, the `vaderSentiment` package, MIT) is a rule-based
lexicon: its `compound` score of a text lies in [-1, 1], higher is happier. It needs
no model and no network, so the classic first RLHF run (TRL's "positive IMDB
reviews" notebook, with GPT-2 and a sentiment classifier) runs on a laptop with the
story model of ../shared/models/stories260k:

    alignloop train-ppo ... --reward-fn examples/sentiment.py:reward
    alignloop eval ...      --judge examples/sentiment.py:judge --judge-name sentiment

The three entry points score the completion alone (what the policy wrote), never the
story opening it continues, so every prompt starts from the same zero:

- `reward(prompts, completions) -> [float]`: train-ppo's `--reward-fn`;
- `judge(prompt_record, completion) -> float`: eval's `--judge`;
- `rank(prompt_id, completions) -> Ranking`: a scripted labeler that prefers the
  happier of K completions (ties where VADER gives equal scores), whose rankings
  become pairs for `alignloop train-rm` like a person's would.

`pip install -e '.[examples]'` installs vaderSentiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

__all__ = ["judge", "rank", "reward", "sentiment"]


@lru_cache(maxsize=1)
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError(
            "examples/sentiment.py needs vaderSentiment: pip install -e '.[examples]'"
        ) from e
    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score of `text` in [-1, 1] (0 for an empty text)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """train-ppo's --reward-fn: the sentiment of each completion (its prompt unused)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    return [sentiment(c) for c in completions]


def judge(prompt, completion: str) -> float:
    """eval's --judge: the sentiment of the completion (the prompt record unused)."""
    return sentiment(completion)


def rank(prompt_id: str, completions, labeler: str = "vader", criterion: str = "sentiment"):
    """A scripted labeler: a ranking record of `completions` (Completion records of
    one prompt), happiest first; completions VADER scores equally share a group."""
    from alignloop.schema import Ranking

    groups: dict[float, list[str]] = {}
    for c in completions:
        if c.prompt_id != prompt_id:
            raise ValueError(f"completion {c.id!r} belongs to {c.prompt_id!r}, not {prompt_id!r}")
        groups.setdefault(sentiment(c.completion), []).append(c.id)
    ranking = [groups[s] for s in sorted(groups, reverse=True)]  # best first
    return Ranking(prompt_id=prompt_id, labeler=labeler, criterion=criterion, ranking=ranking)
