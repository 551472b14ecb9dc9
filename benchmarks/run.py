"""alignloop side by side with TRL: every workload run by both, in one run, on the same
machine, models and data; results in bench/results.json and bench/results.md.

    make bench                                   # creates the environments, then runs this
    .venv/bin/python benchmarks/run.py [--quick] [--repeats 2] [--only rm_llama,ppo]
    .venv/bin/python benchmarks/run.py --profile # pyinstrument profiles of alignloop's side

Each side of each workload is its own process (alignloop in .venv, TRL in
benchmarks/.venv-trl116 or .venv-trl112), with 2 CPU threads. The sides are
interleaved (alignloop, TRL, TRL, alignloop, ...) and every figure is the median over
the repeats, because the machine is shared and its load changes while we measure;
the load average before and after each run is recorded beside it. Memory is the
child's peak resident set (VmHWM of its own address space, read at its end). Quality is measured
afterwards by one evaluator for both sides: held-out pair accuracy for reward models;
for PPO/RLOO the reward model's mean score of sampled responses on held-out prompts,
final policy minus initial policy, with the same sampling seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH,
    CHILD_ENV,
    PATHS,
    REPO,
    RESULTS,
    THREADS,
    WORK,
    read_jsonl,
    write_json,
)

ALIGNLOOP_PY = REPO / ".venv" / "bin" / "python"
PEERS = {  # environment of each TRL side (made by `make bench`)
    "rm_llama": ("TRL 1.16 RewardTrainer", BENCH / ".venv-trl116"),
    "rm_minilm": ("TRL 1.16 RewardTrainer", BENCH / ".venv-trl116"),
    "ppo": ("TRL 1.12 experimental PPOTrainer", BENCH / ".venv-trl112"),
    "rloo": ("TRL 1.16 RLOOTrainer", BENCH / ".venv-trl116"),
}
KIND = {"rm_llama": "reward", "rm_minilm": "reward", "ppo": "ppo", "rloo": "rloo"}

# Default sizes: minutes per run on 2 busy cores. --quick: a smoke run of everything.
SIZES = {
    "rm_llama": {"pairs": None, "max_length": 256, "epochs": 1},
    "rm_minilm": {"pairs": 480, "max_length": 128, "epochs": 1},
    "ppo": {"steps": 24},
    "rloo": {"steps": 12},
}
MEDIUM = {  # --medium: a few minutes per workload, for development
    "rm_llama": {"pairs": 320, "max_length": 128, "epochs": 1},
    "rm_minilm": {"pairs": 160, "max_length": 128, "epochs": 1},
    "ppo": {"steps": 4},
    "rloo": {"steps": 4},
}
QUICK = {
    "rm_llama": {"pairs": 64, "max_length": 64, "epochs": 1},
    "rm_minilm": {"pairs": 32, "max_length": 64, "epochs": 1},
    "ppo": {"steps": 2},
    "rloo": {"steps": 2},
}
PROFILE = {  # long enough for a stable picture of where the time goes
    "rm_llama": {"pairs": 320, "max_length": 128, "epochs": 1},
    "rm_minilm": {"pairs": 160, "max_length": 128, "epochs": 1},
    "ppo": {"steps": 4},
    "rloo": {"steps": 4},
}
RL_COMMON = {
    "temperature": 0.7,
    "response_length": 32,
    "max_prompt_length": 64,
    "kl_coef": 0.05,
    "batch_size": 16,
    "lr": 3e-5,
    "seed": 0,
}
EVAL_PROMPTS, EVAL_SAMPLES = 128, 2  # reward gain: held-out prompts x samples each


# --- the machine ----------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads_per_run": THREADS,
        "memory_gib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "shared": "2 cores shared with other engineers' test runs (see the load averages)",
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- running one side ---------------------------------------------------------------------


def run_child(python: Path, script: str, workload: str, spec: dict, tag: str) -> dict:
    """One side of one workload in its own process; wall time, CPU time (wait4's
    rusage), the child's peak RSS (its VmHWM) and the load average around it."""
    run_dir = WORK / "runs" / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = run_dir / "spec.json", run_dir / "result.json"
    write_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    env = {**os.environ, **CHILD_ENV}
    env.pop("PYTHONPATH", None)  # each environment imports only what it installed
    before = loadavg()
    started = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [str(python), str(BENCH / script), workload, "--spec", str(spec_path),
             "--out", str(out_path)],  # fmt: skip
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    result = json.loads(out_path.read_text()) if out_path.exists() else {"ok": False}
    if not result.get("ok"):
        tail = (run_dir / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}); log {run_dir}/log.txt:\n{tail}")
    result.update(
        wall_seconds=round(wall, 2),
        peak_rss_mb=result["peak_rss_mb_self"],  # VmHWM of the child's own address space
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
        load_before=before,
        load_after=loadavg(),
    )
    return result


def peer_python(workload: str) -> Path:
    python = PEERS[workload][1] / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"error: {python} is missing: `make bench` creates the peers' environments"
        )
    return python


# --- workload specs -------------------------------------------------------------------------


def subset(path: Path, n: int | None, out: Path) -> Path:
    """The first n lines of a JSONL file (all of them when n is None)."""
    if n is None:
        return path
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines(keepends=True)[:n]
    out.write_text("".join(lines))
    return out


def reward_specs(workload: str, size: dict, tag: str) -> tuple[dict, dict, dict]:
    """(alignloop spec, TRL spec, shared facts) of a reward-model workload."""
    from prepare import ensure_pair_ids

    model = PATHS["rm_init"] if workload == "rm_llama" else PATHS["minilm_init"]
    ids = ensure_pair_ids(workload, model, size["max_length"])
    n = size["pairs"]
    data = WORK / "data" / f"{workload}_{n}"
    common = {
        "model": str(model),
        "max_length": size["max_length"],
        "epochs": size["epochs"],
        "batch_size": 8,
        "eval_batch_size": 32,
        "lr": 1e-4 if workload == "rm_llama" else 5e-5,
        "seed": 0,
    }
    al = {
        **common,
        "train": str(subset(PATHS["rm_train"], n, data / "train.jsonl")),
        "eval": str(PATHS["rm_eval"]),
        "norm_samples": 512,
        "out": str(WORK / "runs" / tag / "alignloop-model"),
    }
    peer = {
        **common,
        "train_ids": str(subset(ids["train"], n, data / "train_ids.jsonl")),
        "eval_ids": str(ids["eval"]),
        "out": str(WORK / "runs" / tag / "trl-model"),
    }
    train_rows = read_jsonl(Path(peer["train_ids"]))
    facts = {
        "pairs_trained": len(train_rows) * size["epochs"],
        "tokens_trained": size["epochs"]
        * sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train_rows),
        "eval_ids": peer["eval_ids"],
    }
    return al, peer, facts


def rl_specs(workload: str, size: dict, tag: str) -> tuple[dict, dict, dict]:
    common = {
        **RL_COMMON,
        "policy": str(PATHS["policy"]),
        "tokenizer": str(PATHS["tokenizer"]),
        "reward_model": str(PATHS["rm_trained"]),
        "prompts": str(PATHS["prompts_train"]),
        "steps": size["steps"],
    }
    if workload == "ppo":
        common.update(minibatch_size=16, grad_accum=2, ppo_epochs=4)
    else:
        common.update(k=2, grad_accum=4)
    # alignloop's passes on packed rows (--pack-rows): no padding computed (issue 17)
    al = {**common, "out": str(WORK / "runs" / tag / "alignloop-model"), "pack_rows": True}
    peer = {**common, "out": str(WORK / "runs" / tag / "trl-model")}
    per_step = common["batch_size"] * common.get("k", 1)
    return al, peer, {"episodes": size["steps"] * per_step}


# --- one evaluator for both sides -------------------------------------------------------------


def eval_reward_model(model_dir: str, ids_path: str) -> float:
    """Held-out accuracy: share of pairs with r(chosen) > r(rejected), on the same ids."""
    import torch

    from alignloop.models import RewardModel, pad_right

    rm = RewardModel.from_pretrained(model_dir).eval()
    pad = rm.tokenizer.pad_token_id
    rows = read_jsonl(Path(ids_path))
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 16):
            chunk = rows[start : start + 16]
            seqs = [r["chosen_ids"] for r in chunk] + [r["rejected_ids"] for r in chunk]
            input_ids, mask = pad_right(seqs, pad)
            r = rm(input_ids, mask)
            correct += int((r[: len(chunk)] > r[len(chunk) :]).sum())
    return correct / len(rows)


_REWARD_CACHE: dict[str, dict] = {}


def eval_policy(policy_dir: str) -> dict:
    """Mean reward-model score of EVAL_SAMPLES responses to each of EVAL_PROMPTS
    held-out prompts (temperature and length of the workloads; seeded, so every
    policy is sampled with the same random numbers)."""
    if policy_dir in _REWARD_CACHE:
        return _REWARD_CACHE[policy_dir]
    import torch

    from alignloop.generate import sample
    from alignloop.models import RewardModel, load_policy

    policy, tokenizer = load_policy(policy_dir)
    rm = RewardModel.from_pretrained(PATHS["rm_trained"]).eval()
    prompts = [r["prompt"] for r in read_jsonl(PATHS["prompts_eval"])][:EVAL_PROMPTS]
    prompts = prompts[:EVAL_PROMPTS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        s = sample(
            policy.eval(),
            tokenizer,
            prompts,
            k=EVAL_SAMPLES,
            temperature=RL_COMMON["temperature"],
            max_new_tokens=RL_COMMON["response_length"],
            max_prompt_length=RL_COMMON["max_prompt_length"],
        )
    # alignloop's text interface (the response decoded, prompt + response re-encoded)
    # for every policy alike.
    texts = [prompts[i] for i in s.prompt_index.tolist()]
    scores = torch.tensor(rm.score(texts, s.completions, max_length=512))
    result = {
        "mean_score": round(scores.mean().item(), 4),
        "sem": round((scores.std() / len(scores) ** 0.5).item(), 4),
        "n": len(scores),
        "mean_response_tokens": round(s.response_mask.sum(1).float().mean().item(), 2),
    }
    _REWARD_CACHE[policy_dir] = result
    return result


# --- FLOPs and the matmul peak ---------------------------------------------------------------


def n_params(model_dir: str | Path, kind: str) -> int:
    """N of the FLOP count: the parameters that take part in matrix products, i.e. all
    but the embedding tables (lookups, no arithmetic); an LM head tied to the token
    embedding is a matrix product and counts once. (Counting the tables too would
    inflate the tiny models' FLOPs by 40-50%.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(model_dir), dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    n = total - tables
    if kind == "lm" and model.config.get_text_config().tie_word_embeddings:
        n += model.get_output_embeddings().weight.numel()
    return n


def rl_flops(workload: str, episodes: int) -> float:
    """The issue's count, 6 N x tokens trained + 2 N x tokens only forwarded, for the
    nominal work of one run: every episode is a prompt (mean length of the training
    prompts) plus a full response. PPO: policy generation, reference, value and reward
    forwards, policy and value trained ppo_epochs times. RLOO: generation, reference
    and reward forwards, the policy trained once."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(PATHS["tokenizer"])
    prompts = [r["prompt"] for r in read_jsonl(PATHS["prompts_train"])]
    q = sum(len(x) for x in tok(prompts)["input_ids"]) / len(prompts)
    tokens = episodes * (q + RL_COMMON["response_length"])
    n_lm, n_rm = n_params(PATHS["policy"], "lm"), n_params(PATHS["rm_trained"], "rm")
    if workload == "ppo":
        return 2 * tokens * (2 * n_lm + 2 * n_rm) + 6 * tokens * 4 * (n_lm + n_rm)
    return 2 * tokens * (2 * n_lm + n_rm) + 6 * tokens * n_lm


def matmul_peak() -> dict:
    """Best fp32 matmul rate with 2 threads (square matrices), in a child process."""
    env = {**os.environ, **CHILD_ENV}
    out = subprocess.run([str(ALIGNLOOP_PY), str(BENCH / "matmul_peak.py")], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    best = json.loads(out.stdout.strip().splitlines()[-1])
    return {"gflops_by_size": {k: round(v, 1) for k, v in best.items()},
            "gflops": round(max(best.values()), 1), "load": loadavg()}  # fmt: skip


# --- the workloads ------------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_workload(workload: str, size: dict, repeats: int, log) -> dict:
    kind = KIND[workload]
    runs = {"alignloop": [], "trl": []}
    facts = {}
    for rep in range(repeats):
        # Interleaved: A B, then B A, so a load change hits both sides alike.
        order = ("alignloop", "trl") if rep % 2 == 0 else ("trl", "alignloop")
        for side in order:
            tag = f"{workload}-{side}-{rep}"
            if kind == "reward":
                al, peer, facts = reward_specs(workload, size, f"{workload}-{rep}")
            else:
                al, peer, facts = rl_specs(workload, size, f"{workload}-{rep}")
            log(f"[{workload}] repeat {rep + 1}/{repeats}: {side} (load {loadavg()[0]})")
            if side == "alignloop":
                r = run_child(ALIGNLOOP_PY, "alignloop_side.py", kind, al, tag)
            else:
                r = run_child(peer_python(workload), "trl_side.py", kind, peer, tag)
            if kind == "reward":
                r["held_out_accuracy"] = eval_reward_model(r["model_dir"], facts["eval_ids"])
            else:
                r["policy_eval"] = eval_policy(r["model_dir"])
            runs[side].append(r)
            log(f"    train {r['train_seconds']:.1f} s, wall {r['wall_seconds']:.1f} s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MiB")  # fmt: skip
    return {"size": size, "facts": facts, "runs": runs}


def summarize(workload: str, result: dict, peak_gflops: float) -> dict:
    kind = KIND[workload]
    facts = result["facts"]
    sides = {}
    if kind == "reward":
        flops = 6 * n_params(result["runs"]["alignloop"][0]["model_dir"], "rm") * facts[
            "tokens_trained"
        ]  # fmt: skip
    else:
        flops = rl_flops(workload, facts["episodes"])
        initial = eval_policy(str(PATHS["policy"]))
    for side, runs in result["runs"].items():
        train_s = median([r["train_seconds"] for r in runs])
        s = {
            "train_seconds": train_s,
            "wall_seconds": median([r["wall_seconds"] for r in runs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
            "repeats": len(runs),
            "train_seconds_each": [r["train_seconds"] for r in runs],
            "load_each": [[r["load_before"][0], r["load_after"][0]] for r in runs],
            "versions": runs[0]["versions"],
            "achieved_gflops": round(flops / train_s / 1e9, 2),
            "fraction_of_peak": round(flops / train_s / 1e9 / peak_gflops, 4),
        }
        if runs[0].get("pad_shares"):  # alignloop's own log (benchmarks/alignloop_side.py)
            s["pad_shares"] = runs[0]["pad_shares"]
        if kind == "reward":
            s["pairs_per_second"] = round(facts["pairs_trained"] / train_s, 2)
            s["held_out_accuracy"] = median([r["held_out_accuracy"] for r in runs])
            s["held_out_accuracy_each"] = [r["held_out_accuracy"] for r in runs]
            s["own_eval_accuracy"] = [r["own_eval"]["accuracy"] for r in runs]
        else:
            episodes = runs[0]["episodes"]
            gains = [r["policy_eval"]["mean_score"] - initial["mean_score"] for r in runs]
            s["episodes"] = episodes
            s["episodes_per_second"] = round(episodes / train_s, 3)
            s["reward_gain"] = round(median(gains), 4)
            s["reward_gain_each"] = [round(g, 4) for g in gains]
            s["reward_gain_per_1k_episodes"] = round(1000 * median(gains) / episodes, 4)
            s["final_eval_each"] = [r["policy_eval"] for r in runs]
            s["train_score_first_last"] = [
                [round(sum(r["score_per_step"][:3]) / 3, 4),
                 round(sum(r["score_per_step"][-3:]) / 3, 4)]
                for r in runs if len(r["score_per_step"]) >= 3
            ]  # fmt: skip
        sides[side] = s
    al, peer = sides["alignloop"], sides["trl"]
    ratios = {
        "speed": round(peer["train_seconds"] / al["train_seconds"], 3),
        "wall": round(peer["wall_seconds"] / al["wall_seconds"], 3),
        "peak_memory": round(al["peak_rss_mb"] / peer["peak_rss_mb"], 3),
    }
    if kind == "reward":
        ratios["accuracy_points"] = round(
            100 * (al["held_out_accuracy"] - peer["held_out_accuracy"]), 2
        )
    else:
        ratios["reward_gain_per_episode"] = (
            round(al["reward_gain"] / peer["reward_gain"], 3) if peer["reward_gain"] else None
        )
    out = {"peer": PEERS[workload][0], "size": result["size"], "facts": facts,
           "flops_per_run": flops, "alignloop": al, "trl": peer, "ratios": ratios}  # fmt: skip
    if kind != "reward":
        out["initial_policy_eval"] = initial
    return out


# --- the report -----------------------------------------------------------------------------------


def _num(x) -> str:
    """A figure for the table: 3 significant digits at most, no float noise."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


WORKLOAD_TEXT = {  # the table's description of each workload, {size} filled in
    "rm_llama": "the tiny Llama (hidden 256, 4 layers) + score head, {size}, 8 pairs a "
    "step, lr 1e-4 linear, held out: 160 HH pairs.",
    "rm_minilm": "all-MiniLM-L6-v2 + a new head, {size}, 8 pairs a step, lr 5e-5.",
    "ppo": "SFT'd tiny Llama policy, reference copy, reward model and value model started "
    "from it; {size}, 16 prompts (<= 64 tokens) a step, responses of 32 tokens at "
    "temperature 0.7, 4 PPO epochs over the batch of 16 in 2 micro-batches, lr 3e-5, KL "
    "coefficient 0.05.",
    "rloo": "the same policy and reward model; {size}, 16 prompts x 2 completions a step, "
    "one pass per batch, lr 3e-5, KL coefficient 0.05.",
}


def _size(name: str, r: dict) -> str:
    size, facts = r["size"], r["facts"]
    if KIND[name] == "reward":
        return (f"{facts['pairs_trained'] // size['epochs']} training pairs, at most "
                f"{size['max_length']} tokens, {size['epochs']} epoch(s)")  # fmt: skip
    return f"{size['steps']} steps ({facts['episodes']} episodes)"


# What each padding share of alignloop's log counts (TRL computes the rollout's too,
# at full width, in every pass of its update; its reward batches are plain random ones).
PAD_WORDS = {
    "rm/pad_share": "reward-model batches",
    "ppo/pad_share_rollout": "sampling (full width)",
    "ppo/pad_share_passes": "rollout's policy, reference and value passes (as run)",
    "ppo/pad_share_update": "update minibatches (trimmed, or packed with pack_rows)",
}


def markdown(results: dict) -> str:
    m, w = results["machine"], results["workloads"]
    versions = results["versions"]
    peaks = sorted(x["gflops"] for x in results["matmul_peak"]["measurements"])
    lines = [
        "# alignloop vs TRL: benchmark results",
        "",
        f"Run {results['date']} on {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"({m['threads_per_run']} threads per run), {m['memory_gib']} GiB; "
        f"shared with other jobs (load average {results['load_before'][0]} before, "
        f"{results['load_after'][0]} after). Median of {results['repeats']} interleaved "
        f"repeats per side. Command: `{results['command']}`.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"fp32 matmul peak measured here: {results['matmul_peak']['gflops']} GFLOP/s "
        f"(2 threads; the best of {len(peaks)} measurements, median "
        f"{statistics.median(peaks):.0f}).",
        "",
        "| workload | peer | metric | alignloop | TRL | ratio | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(name, peer, metric, a, b, ratio, target=""):
        a, b = _num(a), _num(b)
        lines.append(f"| {name} | {peer} | {metric} | {a} | {b} | {ratio} | {target} |")

    for name, r in w.items():
        a, b, x = r["alignloop"], r["trl"], r["ratios"]
        peer = r["peer"]
        if KIND[name] == "reward":
            row(name, peer, "pairs/s (training)", a["pairs_per_second"], b["pairs_per_second"],
                f"{x['speed']}x", ">= 1.5x")  # fmt: skip
            row(name, peer, "held-out accuracy", f"{a['held_out_accuracy']:.4f}",
                f"{b['held_out_accuracy']:.4f}", f"{x['accuracy_points']:+.2f} pts",
                ">= -1 pt")  # fmt: skip
        else:
            row(name, peer, "episodes/s", a["episodes_per_second"], b["episodes_per_second"],
                f"{x['speed']}x", ">= 2x" if name == "ppo" else "")  # fmt: skip
            row(name, peer, "reward gain per 1k episodes", a["reward_gain_per_1k_episodes"],
                b["reward_gain_per_1k_episodes"], x["reward_gain_per_episode"],
                ">= 1x" if name == "ppo" else "")  # fmt: skip
        row(name, peer, "peak RSS (MiB)", a["peak_rss_mb"], b["peak_rss_mb"],
            f"{x['peak_memory']}x", "<= 1x" if name == "ppo" else "")  # fmt: skip
        row(name, peer, "wall time of the run (s)", a["wall_seconds"], b["wall_seconds"],
            f"{x['wall']}x")  # fmt: skip
        row(name, peer, "fraction of fp32 peak", f"{100 * a['fraction_of_peak']:.1f}%",
            f"{100 * b['fraction_of_peak']:.1f}%", "")  # fmt: skip
        for key, share in (a.get("pad_shares") or {}).items():
            row(name, peer, f"padding share, {PAD_WORDS.get(key, key)}",
                f"{100 * share:.1f}%", "", "")  # fmt: skip
    sizes = {name: _size(name, r) for name, r in w.items()}
    lines += [
        "",
        "Ratios: speed = TRL's training time / alignloop's (the training loop: "
        "`trainer.train()` for TRL, the loop of `train_reward_model` / `train_ppo` for "
        "alignloop); wall = the whole run of the side (imports, loading, training, "
        "evaluation, saving); peak memory = alignloop / TRL (peak RSS of the run); "
        "accuracy in points, alignloop minus TRL.",
        "",
        "Workloads (both sides: same initial weights, same data, same batch sizes, "
        "lengths and epochs, fp32, 2 threads, `OMP_WAIT_POLICY=PASSIVE`):",
        *(f"- {name}: {WORKLOAD_TEXT[name].format(size=sizes[name])}" for name in w),
        "",
        "What alignloop does its own way (its defaults; TRL keeps its own): reward-model "
        "batches are packed rows, no length grouping (TRL pads each random batch to its "
        "longest): a decoder reward model runs each prompt once for all its completions, "
        "the MiniLM encoder lays several texts end to end in a row (each seeing only "
        "itself); sampling is alignloop's KV-cached loop (a static cache, one uniform "
        "number a token) where TRL calls transformers' `generate`; the policy's head "
        "runs on the response positions only; PPO and RLOO run with `--pack-rows` (not "
        "a default: the rollout's policy, reference and value passes and the update on "
        "packed rows, no padding computed).",
        "",
        "Reward gain: the reward model's mean score of 2 samples for each of 128 "
        "held-out prompts (same seeds for every policy), trained policy minus the "
        "initial one. Fraction of peak: the issue's 6 N x tokens trained + 2 N x "
        "tokens only forwarded over the training time, N = parameters in matrix "
        "products (embedding tables excluded), tokens of the work as TRL does it "
        "(alignloop's reward model runs each shared prompt once, so its figure is an "
        "effective rate), over the best fp32 matmul rate measured in the run.",
        "",
        "Details, every repeat and the load averages: `bench/results.json`; "
        "profiles of both sides: `bench/profiles/`.",
    ]
    return "\n".join(lines) + "\n"


def versions_of(workloads: dict) -> dict:
    found = {}
    for r in workloads.values():
        for side in ("alignloop", "trl"):
            for k, v in r[side]["versions"].items():
                key = f"{k} (TRL 1.12 env)" if k == "trl" and v.startswith("1.12") else k
                found.setdefault(key, v)
    return dict(sorted(found.items()))


def profile(selected: list[str], log) -> None:
    """Each side of each workload under pyinstrument (PROFILE sizes); the text
    summaries go to bench/profiles/{alignloop,trl}-WORKLOAD.txt."""
    out_dir = RESULTS / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    for workload in selected:
        kind = KIND[workload]
        tag = f"profile-{workload}"
        specs = (reward_specs if kind == "reward" else rl_specs)(workload, PROFILE[workload], tag)
        sides = {
            "alignloop": (ALIGNLOOP_PY, "alignloop_side.py", specs[0]),
            "trl": (peer_python(workload), "trl_side.py", specs[1]),
        }
        for side, (python, script, spec) in sides.items():
            run_dir = WORK / "runs" / f"{tag}-{side}"
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "spec.json", spec)
            target = out_dir / f"{side}-{workload}.txt"
            log(f"profiling {side} {workload} -> {target}")
            with open(run_dir / "log.txt", "w") as out:
                subprocess.run(
                    [str(python), "-m", "pyinstrument", "-r", "text", "-o", str(target),
                     "--show-regex", r".*/(trl|alignloop)/.*",  # the trainers' own frames
                     str(BENCH / script), kind, "--spec", str(run_dir / "spec.json"),
                     "--out", str(run_dir / "result.json")],  # fmt: skip
                    env={**os.environ, **CHILD_ENV},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    cwd=REPO,
                )


def main(argv: list[str] | None = None) -> int:
    if any(os.environ.get(k) != v for k, v in CHILD_ENV.items()):
        # This process prepares and evaluates with torch too: same settings as the runs
        # (thread count and OpenMP's wait policy are read when torch loads).
        args = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, __file__, *args], {**os.environ, **CHILD_ENV})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    parser.add_argument("--medium", action="store_true", help="development sizes")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 2)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {list(SIZES)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.* go (default bench/; --quick: benchmarks/.work/quick)")
    parser.add_argument("--render", action="store_true",
                        help="rewrite results.md from results.json (no runs)")
    parser.add_argument("--profile", action="store_true",
                        help="profile alignloop's side of each workload (pyinstrument) instead")
    args = parser.parse_args(argv)
    selected = args.only.split(",") if args.only else list(SIZES)
    unknown = [w for w in selected if w not in SIZES]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(SIZES)}")
    repeats = args.repeats or (1 if args.quick else 2)
    sizes = QUICK if args.quick else MEDIUM if args.medium else SIZES
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    out_dir = args.out or (WORK / "trial" if args.quick or args.medium else RESULTS)

    if args.render:
        results = json.loads((out_dir / "results.json").read_text())
        (out_dir / "results.md").write_text(markdown(results))
        return 0
    from prepare import prepare

    prepare(log=log)
    if args.profile:
        profile(selected, log)
        return 0
    started = time.perf_counter()
    results = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "repeats": repeats,
        "machine": machine(),
        "load_before": loadavg(),
        "manifest": json.loads(PATHS["manifest"].read_text()),
    }
    results["matmul_peak"] = matmul_peak()
    log(f"fp32 matmul peak: {results['matmul_peak']['gflops']} GFLOP/s")
    raw, peaks = {}, [results["matmul_peak"]]
    for w in selected:
        raw[w] = run_workload(w, sizes[w], repeats, log)
        peaks.append(matmul_peak())  # again after each workload: the best is the peak
    results["matmul_peak"] = {
        "gflops": max(m["gflops"] for m in peaks),
        "measurements": peaks,
        "how": "best of 8 torch.matmul of 1024^2 and 2048^2 fp32 matrices, 2 threads, "
        "measured before and after each workload (benchmarks/matmul_peak.py)",
    }
    peak = results["matmul_peak"]["gflops"]
    results["workloads"] = {w: summarize(w, raw[w], peak) for w in selected}
    results["versions"] = versions_of(results["workloads"])
    results["load_after"] = loadavg()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["raw"] = raw
    write_json(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(markdown(results))
    log((out_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
