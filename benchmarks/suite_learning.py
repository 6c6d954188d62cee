"""RL on the ManiSkill multi-task suite (state + task id), CPU: per-task success before and after.

Evaluates the deterministic policy of the tuned example's starting point (the suite SFT
checkpoint) on every task (``--episodes`` per task, seeds 100000…), trains
``--iterations`` iterations, evaluates again on the same seeds, and appends the rows to
``benchmarks/results/suite_learning.csv`` (``--results``); ``suite_learning.png`` shows the table as bars.
Each training iteration's per-task exploration success and return go to
``suite_learning_train.csv`` as they come (drawn in ``suite_learning_train.png``).

    source .vulkan/env.sh
    python benchmarks/suite_learning.py --example flow_sde_suite.yaml --iterations 40

``--config '{"noise_level": 0.2}'`` replaces config keys of the example; ``--no-before`` skips
the first evaluation when another run of the same start made it (same seeds, same rows).
``--eval-every N`` also evaluates the deterministic policy before training and every N
iterations on ``--eval-episodes`` per task (the first of the same seeds), into
``NAME_during.csv``: drawn beside the exploration success in ``NAME_train.png``, it shows when a
task's deterministic success moves and how far it is from the exploring policy's.
``--restore DIR`` continues a run that ``--save DIR`` wrote (same ``--example`` and ``--config``;
its iterations are numbered on from the save's, so give the continued part its own ``--label``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

from pickcube_learning import build_example_algo, write
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from rllib_pirl.evaluation import EvalResult, evaluate, evaluation_env_makers

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
FIELDS = ["algorithm", "stage", "task", "policy_steps", "env_steps", "episodes", "success", "success_lo", "success_hi"]


def evaluate_tasks(module, envs, episodes, label, stage, policy_steps, env_steps, name):
    """Rows of per-task success (and "all") of the deterministic policy."""
    total, rows = EvalResult(), []
    for env in envs:
        total.extend(evaluate(module, env, episodes, seed=100_000))
    for task, (n, rate, (lo, hi)) in total.per_task().items():
        rows.append({"task": task, "episodes": n, "success": rate, "success_lo": lo, "success_hi": hi})
    lo, hi = total.success_ci95
    rows.append(
        {
            "task": "all",
            "episodes": len(total.successes),
            "success": total.success_rate,
            "success_lo": lo,
            "success_hi": hi,
        }
    )
    for row in rows:
        row.update(algorithm=label, stage=stage, policy_steps=policy_steps, env_steps=env_steps)
        print(
            f"{label} {stage} {row['task']}: success {row['success']:.3f} "
            f"[{row['success_lo']:.3f}, {row['success_hi']:.3f}] ({row['episodes']} episodes)",
            flush=True,
        )
    with open(os.path.join(RESULTS, f"{name}.csv"), "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if f.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)


TRAIN_FIELDS = ["algorithm", "iteration", "policy_steps", "wall_s", "task", "explore_success", "episode_return"]
TRAIN_FIELDS += ["groups_trained", "groups_completed"]  # GRPO: the task's groups the filter kept, of those finished


def write_train_rows(label, iteration, policy_steps, wall_s, runners, name):
    """Per-task exploration success and return of one training iteration (RLlib's means over
    the last episodes) and, with GRPO, the task's groups trained on and finished, appended to
    ``NAME_train.csv`` as they come."""
    groups = runners.get("grpo", {})
    rows = []
    for key, value in sorted(runners.items()):
        if not key.startswith("success_rate_"):
            continue
        task = key[len("success_rate_") :]
        rows.append(
            {
                "algorithm": label,
                "iteration": iteration,
                "policy_steps": policy_steps,
                "wall_s": wall_s,
                "task": task,
                "explore_success": round(float(value), 4),
                "episode_return": round(float(runners.get(f"episode_return_mean_{task}", "nan")), 4),
                "groups_trained": int(groups.get("trained_per_task", {}).get(task, 0)) if groups else "",
                "groups_completed": int(groups.get("completed_per_task", {}).get(task, 0)) if groups else "",
            }
        )
    write(rows, f"{name}_train", TRAIN_FIELDS)


def plot(name, runs: dict[str, str] | None = None, png: str | None = None):
    """Redraw NAME.png from NAME.csv: per-task success before/after RL, 95% intervals. With
    ``runs`` ({run label: name shown}) only the SFT start and those runs' final evaluations, into
    ``png``.png (the training rows' picture is left as it is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(os.path.join(RESULTS, f"{name}.csv")) as f:
        rows = list(csv.DictReader(f))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    bars = list(dict.fromkeys((r["algorithm"], r["stage"]) for r in rows))
    if runs:
        missing = [label for label in runs if (label, "after") not in bars]
        if missing:
            raise SystemExit(f"--run: no final evaluation of {missing} in {name}.csv")
        bars = [("SFT", "before")] + [(label, "after") for label in runs]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(9, 4))
    for j, (algo, stage) in enumerate(bars):
        got = {r["task"]: r for r in rows if (r["algorithm"], r["stage"]) == (algo, stage)}
        y = np.array([float(got[t]["success"]) if t in got else np.nan for t in tasks])
        err = np.array(
            [
                [y[i] - float(got[t]["success_lo"]), float(got[t]["success_hi"]) - y[i]] if t in got else [0, 0]
                for i, t in enumerate(tasks)
            ]
        ).T
        shown = runs[algo] if runs and algo in runs else f"{algo} {stage}"
        ax.bar(np.arange(len(tasks)) + (j - (len(bars) - 1) / 2) * width, y, width, yerr=err, label=shown)
    ax.set_xticks(np.arange(len(tasks)), [t.replace("-v1", "") for t in tasks], rotation=20)
    ax.set_ylabel("success rate (deterministic policy)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ManiSkill suite (state + task id), before and after RL, 2 CPU cores")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{png or name}.png"), dpi=110)
    if not runs:
        plot_training(name)


def plot_training(name, window: int = 5):
    """Redraw NAME_train.png from NAME_train.csv when there is one: per run, each task's
    exploration success and return during training (means over ``window`` iterations; an
    iteration holds ~10 episodes per task), and the deterministic success of ``--eval-every``
    (NAME_during.csv, markers with 95% intervals) where the run made it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = os.path.join(RESULTS, f"{name}_train.csv")
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = list(csv.DictReader(f))
    during = []
    if os.path.exists(os.path.join(RESULTS, f"{name}_during.csv")):
        with open(os.path.join(RESULTS, f"{name}_during.csv")) as f:
            during = list(csv.DictReader(f))
        with open(os.path.join(RESULTS, f"{name}.csv")) as f:  # the final evaluation, at the last iteration
            last = {r["algorithm"]: r["iteration"] for r in rows}
            during += [
                {**r, "stage": f"iteration {last[r['algorithm']]}"}
                for r in csv.DictReader(f)
                if r["stage"] == "after" and r["algorithm"] in last
            ]
    runs = list(dict.fromkeys(r["algorithm"] for r in rows))
    # One colour per task in every panel (a run that leaves a task out keeps the others' colours).
    tasks = sorted({r["task"] for r in rows + during if r["task"] != "all"})
    colour = {task: plt.get_cmap("tab10")(i % 10) for i, task in enumerate(tasks)}
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.2 * len(runs)), squeeze=False)
    for (ax_s, ax_r), run in zip(axes, runs):
        for task in tasks:
            mine = [r for r in rows if r["algorithm"] == run and r["task"] == task]
            short = task.replace("-v1", "")
            if len(mine) >= window:  # (a run shorter than the window draws its evaluations only)
                it = np.array([int(r["iteration"]) for r in mine])
                for ax, key in ((ax_s, "explore_success"), (ax_r, "episode_return")):
                    y = np.convolve([float(r[key]) for r in mine], np.ones(window) / window, mode="valid")
                    ax.plot(it[window - 1 :], y, label=short, color=colour[task])
            points = [r for r in during if r["algorithm"] == run and r["task"] == task]
            if points:
                x = [int(r["stage"].split()[-1]) for r in points]
                y = np.array([float(r["success"]) for r in points])
                err = [y - [float(r["success_lo"]) for r in points], [float(r["success_hi"]) for r in points] - y]
                ax_s.errorbar(x, y, yerr=err, fmt="o--", color=colour[task], ms=4, capsize=2, lw=0.8)
                if not mine:  # evaluated, not trained: named in the legend
                    ax_r.plot([], [], "o--", color=colour[task], label=f"{short} (not trained)")
        ax_s.set_ylabel(f"exploration success\n(mean of {window} iterations)" + ("; o deterministic" if during else ""))
        ax_r.set_ylabel("episode return (pirl)")
        ax_s.set_title(run, fontsize=9)
        for ax in (ax_s, ax_r):
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        ax_r.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{name}_train.png"), dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", help="tuned example: a file name in tuned_examples/ or a path")
    p.add_argument("--label", help="name of the run in the CSV and plot (default: the algorithm)")
    p.add_argument("--results", default="suite_learning", help="CSV/PNG name in benchmarks/results")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per task")
    p.add_argument(
        "--config", type=json.loads, default={}, help="config keys replaced, as JSON: '{\"noise_level\": 0.2}'"
    )
    p.add_argument("--save", help="write the final algorithm checkpoint to this folder")
    p.add_argument(
        "--no-before", action="store_true", help="skip the evaluation before training (e.g. another run made it)"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="also evaluate before training and every N iterations (--eval-episodes per task) into NAME_during.csv",
    )
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per task of each --eval-every evaluation")
    p.add_argument(
        "--restore",
        help="continue the algorithm checkpoint a run saved with --save (same --example and --config; "
        "iterations are numbered on from its own, so give the continued part its own --label)",
    )
    p.add_argument("--plot-only", action="store_true", help="only redraw the PNG from the CSV")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        help="with --plot-only: draw only the SFT start and this run's final evaluation, 'LABEL' or "
        "'LABEL=name shown' (repeatable), into --png",
    )
    p.add_argument("--png", help="with --run: the PNG name in benchmarks/results")
    args = p.parse_args()
    if args.eval_every < 0 or args.eval_episodes < 1:
        p.error("--eval-every must be ≥ 0 (0: none) and --eval-episodes ≥ 1")
    os.makedirs(RESULTS, exist_ok=True)
    if args.run and not (args.plot_only and args.png):
        p.error("--run draws a selection: give it with --plot-only and --png NAME")
    if args.plot_only:
        plot(args.results, dict(r.split("=", 1) if "=" in r else (r, r) for r in args.run) or None, args.png)
        return
    if not args.example:
        p.error("--example is required (e.g. flow_sde_suite.yaml)")
    if args.restore and not os.path.isfile(os.path.join(args.restore, "rllib_checkpoint.json")):
        p.error(f"--restore {args.restore}: not an algorithm checkpoint (no rllib_checkpoint.json; --save writes one)")
    spec, algo = build_example_algo(args.example, overrides=args.config)
    label = args.label or spec["run"]
    envs = [make() for make in evaluation_env_makers(spec["env"], dict(algo.config.env_config))]
    start, policy_steps, first = time.time(), 0, 0
    try:
        if args.restore:  # weights, optimizer, counters; the ref_kl_coeff anchor stays the SFT start
            algo.restore_from_path(os.path.abspath(args.restore))
            first = algo.iteration
            policy_steps = int(algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))
            print(f"continuing from {args.restore}: iteration {first}, {policy_steps} policy steps", flush=True)
        if not args.no_before and not args.restore:
            evaluate_tasks(algo.get_module(), envs, args.episodes, "SFT", "before", 0, 0, args.results)
        for it in range(first, first + args.iterations):
            if args.eval_every and it % args.eval_every == 0:
                evaluate_tasks(
                    algo.get_module(),
                    envs,
                    args.eval_episodes,
                    label,
                    f"iteration {it}",
                    policy_steps,
                    policy_steps * algo.config.action_chunk,
                    f"{args.results}_during",
                )
            result = algo.train()
            runners = result["env_runners"]
            policy_steps = int(runners["num_env_steps_sampled_lifetime"])
            per_task = " ".join(
                f"{k[len('success_rate_') :].replace('-v1', '')} {v:.2f}"
                for k, v in sorted(runners.items())
                if k.startswith("success_rate_")
            )
            returns = " ".join(
                f"{k[len('episode_return_mean_') :].replace('-v1', '')} {v:.2f}"
                for k, v in sorted(runners.items())
                if k.startswith("episode_return_mean_")
            )
            # (a GRPO iteration whose groups the success filter all dropped trains nothing: no learner results)
            learner = result.get("learners", {}).get("default_policy", {})
            groups = runners.get("grpo", {})
            trained = " ".join(
                f"{task.replace('-v1', '')} {int(n)}/{int(groups.get('completed_per_task', {}).get(task, 0))}"
                for task, n in sorted(groups.get("trained_per_task", {}).items())
            )
            print(
                f"  iter {it + 1}: policy steps {policy_steps}, explore success {per_task}; return {returns}; "
                f"kl {learner.get('approx_kl', float('nan')):.4f} clip {learner.get('clip_fraction', float('nan')):.3f} "
                f"vf_ev {learner.get('vf_explained_var', float('nan')):.2f}"
                + (f" ref_kl {learner['ref_kl']:.4f}" if "ref_kl" in learner else "")
                + (f"; groups trained/completed {trained}" if trained else "")
                + f" ({time.time() - start:.0f} s)",
                flush=True,
            )
            write_train_rows(label, it + 1, policy_steps, round(time.time() - start), runners, args.results)
        evaluate_tasks(
            algo.get_module(),
            envs,
            args.episodes,
            label,
            "after",
            policy_steps,
            policy_steps * algo.config.action_chunk,
            args.results,
        )
        if args.save:
            print(f"checkpoint: {algo.save(os.path.abspath(args.save)).checkpoint.path}", flush=True)
    finally:
        algo.stop()
        for env in envs:
            env.close()
    plot(args.results)


if __name__ == "__main__":
    main()
