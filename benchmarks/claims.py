"""The paper's claims at CPU scale, over training seeds: per recipe, each seed's deterministic
success at the budget's evaluation points and their mean and spread (no new runs).

Reads the evaluation rows that ``benchmarks/pickcube_learning.py`` appended to
``benchmarks/results/*.csv`` (one row per evaluation: run label, env steps, episodes, success
and its 95% Wilson interval on the fixed seeds 100000…) and prints one markdown table per
recipe: the points where every run of the recipe's list was evaluated (60, 120, 180 iterations
= 615k, 1.23M, 1.85M env steps), each seed's figure with its interval, the mean over the seeds
and their range, the seeds' episodes pooled (success with its 95% Wilson interval: this mixes
the spread over seeds into one figure, so read it beside the range), and each run's last evaluation (a run stopped before the budget shows it there).
A run that has not reached a point yet shows "—".

    python benchmarks/claims.py
"""

from __future__ import annotations

import csv
import os

import numpy as np

from rllib_pirl.evaluation import wilson_interval

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
POINTS = {"615k": 615_000, "1.23M": 1_230_000, "1.85M": 1_845_000, "2.05M": 2_050_000}
TOLERANCE = 5_000  # env steps: a run's evaluation at iteration 60/120/180 lands within this of the point
# recipe -> (its evaluation points: 60, 120 iterations and its budget; [(results CSV name, run label)], one
# per training seed)
RECIPES = {
    "Flow-SDE, PPO (flow_sde_pickcube.yaml, 180 iterations)": (
        ["615k", "1.23M", "1.85M"],
        [
            ("pickcube_one_run", "Flow-SDE, one run"),
            ("pickcube_one_run", "Flow-SDE, dual clip 3, seed 1"),
            ("pickcube_one_run", "Flow-SDE, dual clip 3, seed 2"),
        ],
    ),
    "Flow-Noise, PPO with dual clip 3 (flow_noise_pickcube.yaml, 200 iterations)": (
        ["615k", "1.23M", "2.05M"],
        [
            ("pickcube_one_run", "Flow-Noise, dual clip 3, seed 1"),
            ("pickcube_one_run", "Flow-Noise, dual clip 3, seed 2"),
            ("pickcube_one_run", "Flow-Noise, dual clip 3, seed 3"),
        ],
    ),
    "(c) Flow-SDE with all K steps stochastic (flow_sde_pickcube.yaml + sde_steps: all, dual clip 3)": (
        ["615k", "1.23M", "1.85M"],
        [("pickcube_one_run", "Flow-SDE, all K steps stochastic, dual clip 3, seed 4")],
    ),
    "Flow-SDE + kl_early_stop 0.03, on the training seeds that collapsed without it (one step: seed 2; all K: seed 4)": (
        ["615k", "1.23M", "1.85M"],
        [
            ("pickcube_one_run", "Flow-SDE, dual clip 3, KL stop 0.03, seed 2"),
            ("pickcube_one_run", "Flow-SDE, all K steps stochastic, dual clip 3, KL stop 0.03, seed 4"),
        ],
    ),
    "Flow-SDE, PPO with dual clip 3, no bootstrap at the time limit (the default now)": (
        ["615k", "1.23M", "1.85M"],
        [
            ("pickcube_one_run", "Flow-SDE, dual clip 3, no time-limit bootstrap, seed 0"),
            ("pickcube_one_run", "Flow-SDE, dual clip 3, no time-limit bootstrap, seed 2"),
        ],
    ),
    "Flow-Noise, PPO with dual clip 3, no bootstrap at the time limit (the default now)": (
        ["615k", "1.23M", "2.05M"],
        [("pickcube_one_run", "Flow-Noise, dual clip 3, no time-limit bootstrap, seed 3")],
    ),
    "Flow-SDE, GRPO (flow_sde_pickcube_grpo.yaml, 180 iterations)": (
        ["615k", "1.23M", "1.85M"],
        [
            ("pickcube_grpo", "Flow-SDE GRPO, seed 0"),
            ("pickcube_grpo", "Flow-SDE GRPO, seed 1"),
            ("pickcube_grpo", "Flow-SDE GRPO, seed 2"),
        ],
    ),
}


def rows_of(name: str, label: str) -> list[dict]:
    path = os.path.join(RESULTS, f"{name}.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["algorithm"] == label]


def at_point(rows: list[dict], env_steps: int) -> dict | None:
    near = [r for r in rows if abs(int(r["env_steps"]) - env_steps) <= TOLERANCE]
    return max(near, key=lambda r: int(r["episodes"])) if near else None


def cell(row: dict | None, steps: bool = False) -> str:
    if row is None:
        return "—"
    where = f"{int(row['env_steps']) / 1e6:.2f}M, " if steps else ""
    lo, hi = float(row["success_lo"]), float(row["success_hi"])
    return f"{float(row['success']):.4g} [{lo:.3f}, {hi:.3f}] ({where}{row['episodes']} ep.)"


def summary(rows: list[dict | None]) -> str:
    rows = [r for r in rows if r]
    if not rows:
        return "—"
    values = [float(r["success"]) for r in rows]
    spread = (
        f"{np.mean(values):.4g} [{min(values):.4g}, {max(values):.4g}], {len(values)} seed{'s' * (len(values) > 1)}"
    )
    episodes = sum(int(r["episodes"]) for r in rows)
    successes = sum(round(float(r["success"]) * int(r["episodes"])) for r in rows)
    lo, hi = wilson_interval(successes, episodes)
    return f"{spread}; pooled {successes / episodes:.4g} [{lo:.3f}, {hi:.3f}] ({episodes} ep.)"


def table(recipe: str, points: list[str], runs: list[tuple[str, str]]) -> str:
    lines = [
        f"**{recipe}**",
        "",
        "| env steps | " + " | ".join(label for _, label in runs) + " | mean over seeds [range]; pooled [95% CI] |",
        "|---|" + "---|" * (len(runs) + 1),
    ]
    found = [rows_of(name, label) for name, label in runs]
    for point in points:
        at = [at_point(rows, POINTS[point]) for rows in found]
        lines.append(f"| {point} | " + " | ".join(cell(r) for r in at) + f" | {summary(at)} |")
    last = [max(rows, key=lambda r: int(r["env_steps"])) if rows else None for rows in found]
    lines.append("| last evaluation | " + " | ".join(cell(r, steps=True) for r in last) + " | |")
    return "\n".join(lines)


def main() -> None:
    print("\n\n".join(table(recipe, points, runs) for recipe, (points, runs) in RECIPES.items()))


if __name__ == "__main__":
    main()
