"""RL from the SFT checkpoint on ManiSkill PickCube-v1 (state), CPU: learning curves.

Trains the tuned example(s) and evaluates the deterministic policy on fixed seeds
(``--episodes`` at every ``--eval-every`` iterations, ``--final-episodes`` at the end,
seeds 100000…, the same seeds for the SFT start). Appends rows to
``benchmarks/results/pickcube_learning.csv`` (``--results``) and redraws ``pickcube_learning.png``;
every training iteration's learner and exploration figures (learned noise std, entropy,
|log-prob|, KL, clip fraction, exploration success) go to ``pickcube_learning_train.csv``
as they come, to diagnose a run afterwards.

    source .vulkan/env.sh
    python benchmarks/pickcube_learning.py --example flow_sde_pickcube.yaml --iterations 200

A run longer than a session: ``--checkpoint DIR`` saves the algorithm there every
``--checkpoint-every`` iterations together with the loop's counters (``progress.json``); the same
command run again with the same DIR continues from the last save (the run's rows written after
that save are replaced by the continued run's; ``wall_s`` adds the time of every part).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import numpy as np
import ray
import torch

from rllib_pirl.envs.maniskill import make_maniskill_env
from rllib_pirl.evaluation import evaluate
from rllib_pirl.experiments import build_config, load_experiments, resolve_algorithm

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
FIELDS = [
    "algorithm",
    "iteration",
    "policy_steps",
    "env_steps",
    "wall_s",
    "episodes",
    "success",
    "success_lo",
    "success_hi",
    "mean_return",
    "explore_success",
]


def evaluate_row(algo, env, episodes, name, it, policy_steps, env_steps, start, explore_success):
    res = evaluate(algo.get_module(), env, episodes, seed=100_000)
    lo, hi = res.success_ci95
    row = {
        "algorithm": name,
        "iteration": it,
        "policy_steps": policy_steps,
        "env_steps": env_steps,
        "wall_s": round(time.time() - start),
        "episodes": episodes,
        "success": res.success_rate,
        "success_lo": lo,
        "success_hi": hi,
        "mean_return": res.mean_return,
        "explore_success": explore_success,
    }
    print(
        f"{name} iter {it} policy steps {policy_steps} env steps {env_steps}: success {res.success_rate:.3f} "
        f"[{lo:.3f}, {hi:.3f}] return {res.mean_return:.3f} (exploration success {explore_success})",
        flush=True,
    )
    return row


TRAIN_FIELDS = [
    "algorithm",
    "iteration",
    "policy_steps",
    "wall_s",
    "explore_success",
    "episode_return",
    "approx_kl",
    "clip_fraction",
    "vf_explained_var",
    "noise_std",
    "entropy",
    "mean_abs_logp",
    "groups_trained",
    "groups_filtered",
]


def write(rows, name, fields=FIELDS):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def plot(name, target: float | None = 0.85):
    """Redraw NAME.png from NAME.csv (success vs env steps, 95% intervals, the ``target`` success
    as a dashed line unless None) and, when the run saved its training rows (NAME_train.csv),
    beside it the exploration success per iteration (mean of 10 iterations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(RESULTS, f"{name}.csv")) as f:
        rows = list(csv.DictReader(f))
    train_path = os.path.join(RESULTS, f"{name}_train.csv")
    train = []
    if os.path.exists(train_path):
        with open(train_path) as f:
            train = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, 2 if train else 1, figsize=(11 if train else 6.5, 4), squeeze=False)
    labels = sorted({r["algorithm"] for r in rows + train})
    color = {algo: f"C{i % 10}" for i, algo in enumerate(labels)}  # a run keeps its colour in both panels
    ax = axes[0][0]
    for algo in sorted({r["algorithm"] for r in rows}):
        r = [x for x in rows if x["algorithm"] == algo]
        steps = [int(x["env_steps"]) / 1000 for x in r]
        ax.plot(steps, [float(x["success"]) for x in r], marker="o", label=algo, color=color[algo])
        lo, hi = ([float(x[k]) for x in r] for k in ("success_lo", "success_hi"))
        ax.fill_between(steps, lo, hi, alpha=0.2, color=color[algo])
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
    _label_axes(
        ax,
        "env steps, thousands (≤ 5 × policy steps)",
        "success rate (deterministic policy)",
        "ManiSkill PickCube-v1, RL from the SFT checkpoint, 2 CPU cores",
    )
    if train:
        ax = axes[0][1]
        for algo in sorted({r["algorithm"] for r in train}):
            its = [int(x["iteration"]) for x in train if x["algorithm"] == algo]
            success = np.array([float(x["explore_success"]) for x in train if x["algorithm"] == algo])
            window = min(10, len(success))
            mean = np.convolve(np.nan_to_num(success), np.ones(window) / window, mode="valid")
            ax.plot(its[window - 1 :], mean, label=algo, color=color[algo])
        _label_axes(
            ax, "iteration", "exploration success (mean of 10 iterations)", "the stochastic policy while training"
        )
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{name}.png"), dpi=110)


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a 0–1 success axis, grid, legend and title of one panel of :func:`plot`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)


def load_example(example: str) -> tuple[str, dict]:
    """``(name, spec)`` of a tuned example: a file name in tuned_examples/ or a path."""
    path = example if os.path.exists(example) else os.path.join(HERE, "..", "tuned_examples", example)
    ((name, spec),) = load_experiments(path).items()
    return name, spec


def build_example_algo(example: str, seed: int | None = None, overrides: dict | None = None):
    """Start Ray on the 2 cores and build the algorithm of a tuned example (a file name
    in tuned_examples/ or a path), with its training ``seed`` and the config keys of
    ``overrides`` replaced when given; returns ``(spec, algo)``."""
    torch.set_num_threads(1)
    if not ray.is_initialized():  # a second example in the same process shares it
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    name, spec = load_example(example)
    if seed is not None:
        spec["config"]["seed"] = seed
    spec["config"].update(overrides or {})
    return spec, build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name).build_algo()


def save_progress(algo, folder: str, progress: dict) -> None:
    """Save the algorithm to ``folder`` and then the loop's counters beside it (last, so that a
    ``progress.json`` always names a complete save)."""
    algo.save_to_path(os.path.abspath(folder))
    tmp = os.path.join(folder, "progress.json.tmp")
    with open(tmp, "w") as f:
        json.dump(progress, f)
    os.replace(tmp, os.path.join(folder, "progress.json"))


def drop_rows_from(name: str, label: str, iteration: int) -> list[dict]:
    """Remove the rows of run ``label`` at ``iteration`` or later from ``NAME.csv``: what a
    continued run makes again (it restarts at its last save). Returns the rows kept."""
    path = os.path.join(RESULTS, f"{name}.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [r for r in rows if r["algorithm"] != label or int(r["iteration"]) < iteration]
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(path + ".tmp", path)
    return kept


def read_progress(folder: str | None) -> dict | None:
    """The loop's counters of the last save in ``folder`` (None: nothing to continue)."""
    path = os.path.join(folder or "", "progress.json")
    if not folder or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", help="tuned example: a file name in tuned_examples/ or a path")
    p.add_argument("--label", help="name of the run in the CSV and plot (default: the algorithm)")
    p.add_argument("--results", default="pickcube_learning", help="CSV/PNG name in benchmarks/results")
    p.add_argument("--seed", type=int, help="training seed (default: the example's)")
    p.add_argument(
        "--config", type=json.loads, default={}, help="config keys replaced, as JSON: '{\"dual_clip_param\": 3}'"
    )
    p.add_argument("--save", help="write the final algorithm checkpoint to this folder")
    p.add_argument("--checkpoint", help="save every --checkpoint-every iterations here; rerun to continue")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--final-episodes", type=int, default=400)
    p.add_argument("--no-start-eval", action="store_true", help="skip the evaluation before training")
    p.add_argument("--plot-only", action="store_true", help="only redraw the PNG from the CSV")
    p.add_argument(
        "--target",
        type=float,
        default=0.85,
        help="success drawn as the plot's dashed target line (the state recipe's 0.85); 0: none",
    )
    args = p.parse_args()
    target = args.target or None  # 0: no target line
    if args.plot_only:
        plot(args.results, target)
        return
    if not args.example:
        p.error("--example is required (e.g. flow_sde_pickcube.yaml)")

    def evaluates_at(it: int) -> bool:
        return (it % args.eval_every == 0 and not (it == 0 and args.no_start_eval)) or it == args.iterations

    resumed = read_progress(args.checkpoint)
    label = args.label or load_example(args.example)[1]["run"]
    if resumed and resumed["label"] != label:  # before Ray and the simulators start
        p.error(f"--checkpoint {args.checkpoint} holds the run {resumed['label']!r}, not {label!r}")
    # a continued run is the run's config restored: its env runners then draw the seeds of the
    # restored iteration, not the run's first episodes again (FlowPPO.restore_from_path)
    _, algo = build_example_algo(args.example, resumed["seed"] if resumed else args.seed, args.config)
    start, rows, policy_steps, env_steps, explore, first = time.time(), [], 0, 0, None, 0
    save_evaluated = False  # a continued run whose save's evaluation row is in the CSV already
    train_seed = algo.config.seed
    if resumed:
        algo.restore_from_path(os.path.abspath(args.checkpoint))
        first, policy_steps, env_steps, explore = (
            resumed[k] for k in ("iteration", "policy_steps", "env_steps", "explore")
        )
        start -= resumed["wall_s"]
        # evaluation rows after the save; the save's own is kept when the run made it before it stopped
        kept = drop_rows_from(args.results, label, first + 1)
        save_evaluated = any(r["algorithm"] == label and int(r["iteration"]) == first for r in kept)
        drop_rows_from(f"{args.results}_train", label, first + 1)  # training rows after the save
        print(f"resumed {label!r} at iteration {first} from {args.checkpoint}", flush=True)
    env = make_maniskill_env(dict(algo.config.env_config))
    chunk = algo.config.action_chunk
    try:
        for it in range(first, args.iterations + 1):
            if evaluates_at(it) and not (it == first and save_evaluated):
                episodes = args.final_episodes if it in (0, args.iterations) else args.episodes
                rows.append(evaluate_row(algo, env, episodes, label, it, policy_steps, env_steps, start, explore))
                write(rows[-1:], args.results)
            if it < args.iterations:
                result = algo.train()
                runners = result["env_runners"]
                policy_steps = int(runners["num_env_steps_sampled_lifetime"])
                env_steps = policy_steps * chunk  # upper bound: the last chunk of an episode may stop early
                explore = round(float(runners.get("success_rate", float("nan"))), 3)
                learner = result.get("learners", {}).get("default_policy", {})  # none: GRPO kept no group yet
                groups = runners.get("grpo") or {}  # GRPO: groups trained on / dropped by the filter
                train = {
                    "algorithm": label,
                    "iteration": it + 1,
                    "policy_steps": policy_steps,
                    "wall_s": round(time.time() - start),
                    "explore_success": explore,
                    "episode_return": float(runners.get("episode_return_mean", float("nan"))),
                    **{k: float(learner.get(k, float("nan"))) for k in TRAIN_FIELDS[6:12]},
                    "groups_trained": groups.get("groups_trained", ""),
                    "groups_filtered": groups.get("groups_filtered", ""),
                }
                train = {k: round(float(v), 4) if isinstance(v, float) else v for k, v in train.items()}
                write([train], f"{args.results}_train", TRAIN_FIELDS)
                grpo = (
                    f", groups {train['groups_trained']:.0f} (filtered {train['groups_filtered']:.0f})"
                    if groups
                    else ""
                )
                print(
                    f"  iter {it + 1}: policy steps {policy_steps}, explore success {explore}, "
                    f"return {train['episode_return']:.3f}, kl {train['approx_kl']:.4f}, "
                    f"clip {train['clip_fraction']:.3f}, vf_ev {train['vf_explained_var']:.2f}, "
                    f"noise std {train['noise_std']:.4f}, entropy {train['entropy']:.3f}, "
                    f"|logp| {train['mean_abs_logp']:.3f}{grpo} ({train['wall_s']} s)",
                    flush=True,
                )
                if args.checkpoint and (it + 1) % args.checkpoint_every == 0:  # saved before its evaluation
                    progress = {"label": label, "seed": train_seed, "iteration": it + 1, "policy_steps": policy_steps}
                    progress |= {"env_steps": env_steps, "explore": explore, "wall_s": time.time() - start}
                    save_progress(algo, args.checkpoint, progress)
        if args.save:
            print(f"checkpoint: {algo.save(os.path.abspath(args.save)).checkpoint.path}", flush=True)
    finally:
        algo.stop()
        env.close()
    plot(args.results, target)


if __name__ == "__main__":
    main()
