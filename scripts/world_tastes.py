"""How strong the world's labelers' tastes are (issue 16, "Measured on the built-in
world"): a script, not a CI test (tests/world/test_labelers.py checks the same figures
on fewer documents).

    .venv/bin/python scripts/world_tastes.py [--documents 500] [--seed 0] [--k 4]
        [--best-of 16] [--panel personal|default] [--json OUT.json]

On `--documents` world documents with `--k` `candidate_summaries` each, for every
labeler of the panel and for `NEW_USER`:

- `vs_gold`, `vs_pooled`: the share of pairs of candidates that the labeler's
  noiseless utility orders against the gold judge / against the pooled view (the
  panel's mean utility), over the pairs both order strictly;
- `own_on_own`, `pooled_on_own`: on the labeler's own noisy pairs (the rankings
  `simulate_rankings` gives, overlap 3), the share that their own utility / the
  pooled view orders as they did (ties count half): a perfect personal reward model
  and a perfect pooled one. Their difference is the headroom of a personal model.
  (For `NEW_USER`, who is in no panel, their rankings of every document.)
- `gold_win_of_best`: of `--best-of` candidates per document, the gold judge's win
  rate (ties half) of the one this labeler likes best against each of the others: what
  a policy that writes exactly what they like would cost in the judge's eyes (the
  judge's own favourite scores about 1.0, a random candidate 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
from itertools import combinations

from alignloop.schema import Completion
from alignloop.world import (
    NEW_USER,
    candidate_summaries,
    default_labelers,
    disagreement,
    gold_utility,
    make_prompts,
    panel_utility,
    personal_labelers,
    simulate_rankings,
)


def _agreement_on_pairs(rankings, judge, prompts, texts) -> float:
    by_id = {p.id: p for p in prompts}
    hit = n = 0.0
    for r in rankings:
        pos, prompt = r.positions(), by_id[r.prompt_id]
        for a, b in combinations(sorted(pos), 2):
            if pos[a] == pos[b]:
                continue
            d = judge(prompt, texts[a]) - judge(prompt, texts[b])
            n += 1
            hit += 0.5 if abs(d) <= 1e-9 else float((d > 0) == (pos[a] < pos[b]))
    return hit / n


def _gold_win_of_best(judge, groups) -> float:
    wins = n = 0.0
    for prompt, texts in groups:
        best = max(texts, key=lambda t: judge(prompt, t))
        g = gold_utility(prompt, best)
        for t in texts:
            if t != best:
                d = g - gold_utility(prompt, t)
                n += 1
                wins += 0.5 if abs(d) <= 1e-9 else float(d > 0)
    return wins / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--best-of", type=int, default=16)
    ap.add_argument("--panel", choices=("personal", "default"), default="personal")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    panel = personal_labelers() if args.panel == "personal" else default_labelers()
    prompts = make_prompts(args.documents, args.seed, id_prefix="tastes")
    rng = random.Random(args.seed)
    groups = [(p, candidate_summaries(p, args.k, rng)) for p in prompts]
    completions = [Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=t)
                   for p, ts in groups for j, t in enumerate(ts)]  # fmt: skip
    texts = {c.id: c.completion for c in completions}
    many = [(p, list(dict.fromkeys(candidate_summaries(p, args.best_of, rng)))) for p in prompts]

    def pooled(prompt, text):
        return panel_utility(panel, prompt, text)

    rankings = simulate_rankings(prompts, completions, panel, overlap=3, seed=args.seed)
    new_rankings = simulate_rankings(prompts, completions, [NEW_USER], overlap=1, seed=args.seed)
    rows = {}
    for lab in [*panel, NEW_USER]:
        own = [r for r in (new_rankings if lab is NEW_USER else rankings) if r.labeler == lab.name]
        rows[lab.name] = {
            "strong_taste": lab.strong_taste,
            "in_panel": lab is not NEW_USER,
            "vs_gold": disagreement(lab.utility, gold_utility, groups)[0],
            "vs_pooled": disagreement(lab.utility, pooled, groups)[0],
            "own_on_own": _agreement_on_pairs(own, lab.utility, prompts, texts),
            "pooled_on_own": _agreement_on_pairs(own, pooled, prompts, texts),
            "gold_win_of_best": _gold_win_of_best(lab.utility, many),
        }
    print(f"{args.panel} panel, {args.documents} documents x {args.k} candidates, "
          f"seed {args.seed}")  # fmt: skip
    print(f"{'labeler':26s} strong  vs_gold vs_pooled  own_on_own pooled_on_own "
          "gold_win_of_best")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:26s} {'yes' if r['strong_taste'] else 'no':6s} {r['vs_gold']:8.3f} "
              f"{r['vs_pooled']:9.3f} {r['own_on_own']:11.3f} {r['pooled_on_own']:13.3f} "
              f"{r['gold_win_of_best']:16.3f}")  # fmt: skip
    print(f"{'(pooled view)':26s} {'':6s} {'':8s} {'':9s} {'':11s} {'':13s} "
          f"{_gold_win_of_best(pooled, many):16.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "labelers": rows}, f, indent=2)


if __name__ == "__main__":
    main()
