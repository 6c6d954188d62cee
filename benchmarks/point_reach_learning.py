"""Learning curves of Flow-SDE and Flow-Noise (PPO) and Flow-SDE with GRPO on PointReach
(the tuned examples).

Trains each from a random initialisation with the settings of
``tuned_examples/flow_{sde,noise}_point_reach.yaml`` and ``flow_sde_point_reach_grpo.yaml``
and evaluates the deterministic
policy every ``--eval-every`` iterations on fixed seeds (``--episodes``, seeds
10000…). Writes ``benchmarks/results/point_reach_learning.{csv,png}`` and prints a
table with 95% intervals.

    python benchmarks/point_reach_learning.py [--iterations 200] [--eval-every 20] [--episodes 200]
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import ray
import torch
from pickcube_learning import load_example

from rllib_pirl.envs import make_point_reach
from rllib_pirl.evaluation import evaluate
from rllib_pirl.experiments import build_config, resolve_algorithm

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = {
    "FlowSDE": "flow_sde_point_reach.yaml",
    "FlowNoise": "flow_noise_point_reach.yaml",
    "FlowSDE GRPO": "flow_sde_point_reach_grpo.yaml",
}


def run(label, example, iterations, eval_every, episodes, seed):
    name, spec = load_example(example)
    config = build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name).debugging(seed=seed)
    algo = config.build_algo()
    env = make_point_reach(dict(algo.config.env_config))
    rows, steps, start = [], 0, time.time()
    try:
        for it in range(iterations + 1):
            if it % eval_every == 0:
                res = evaluate(algo.get_module(), env, episodes, seed=10_000)
                rows.append(
                    {
                        "algorithm": label,
                        "iteration": it,
                        "policy_steps": steps,
                        "wall_s": round(time.time() - start, 1),
                        "mean_return": res.mean_return,
                        "return_lo": res.return_ci95[0],
                        "return_hi": res.return_ci95[1],
                        "success": res.success_rate,
                        "success_lo": res.success_ci95[0],
                        "success_hi": res.success_ci95[1],
                    }
                )
                print(
                    f"{label:12s} iter {it:4d}  policy steps {steps:8d}  return {res.mean_return:6.3f} "
                    f"[{res.return_ci95[0]:.3f}, {res.return_ci95[1]:.3f}]  success {res.success_rate:.3f} "
                    f"[{res.success_ci95[0]:.3f}, {res.success_ci95[1]:.3f}]",
                    flush=True,
                )
            if it < iterations:
                steps = int(algo.train()["env_runners"]["num_env_steps_sampled_lifetime"])
    finally:
        algo.stop()
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for algo in EXAMPLES:
        r = [x for x in rows if x["algorithm"] == algo]
        if not r:
            continue
        steps = [x["policy_steps"] / 1000 for x in r]
        for ax, key in zip(axes, ("mean_return", "success")):
            lo, hi = ("return_lo", "return_hi") if key == "mean_return" else ("success_lo", "success_hi")
            ax.plot(steps, [x[key] for x in r], marker="o", label=algo)
            ax.fill_between(steps, [x[lo] for x in r], [x[hi] for x in r], alpha=0.2)
    axes[0].set_ylabel("mean return (deterministic policy)")
    axes[1].set_ylabel("success rate")
    for ax in axes:
        ax.set_xlabel("policy steps, thousands (each executes a chunk of 4 env actions)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("PointReach: Flow-SDE vs Flow-Noise (PPO) vs Flow-SDE GRPO from a random flow policy (95% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for label, example in EXAMPLES.items():
        rows += run(label, example, args.iterations, args.eval_every, args.episodes, args.seed)
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "point_reach_learning.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(out, "point_reach_learning.png"))
    print(f"wrote {out}/point_reach_learning.csv and .png")


if __name__ == "__main__":
    main()
