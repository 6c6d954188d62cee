"""Seconds per training iteration of tuned examples, side by side in one run (a ratio).

Builds every ``--example`` (each in this process: its local env runner and learner, its
simulators in child processes), then runs one iteration of each in turn, ``--rounds`` times,
so that the examples share whatever else loads the machine alike. The first round (first
resets, warm-up) is left out. Prints per example: seconds per iteration, of which sampling and
learner update (RLlib's timers), policy steps per iteration, and the ratio of its seconds per
iteration to the first example's. This is what converts "equal env steps" into "equal wall
time" for two recipes of one task (claim (b) in BENCHMARKS.md).

    source .vulkan/env.sh
    python benchmarks/iteration_time.py --example flow_sde_pickcube.yaml --example flow_noise_pickcube.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from ray.rllib.utils.metrics import ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, TIMERS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pickcube_learning import build_example_algo


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", action="append", required=True, help="a tuned example (repeatable)")
    p.add_argument("--rounds", type=int, default=4, help="iterations of each example, the first left out")
    p.add_argument("--config", type=json.loads, default={}, help="config keys replaced in every example, as JSON")
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds must be ≥ 2 (the first round is warm-up)")
    algos = {}
    try:
        for example in args.example:
            algos[example] = build_example_algo(example, overrides=args.config)[1]
        rows = {example: [] for example in args.example}
        for r in range(args.rounds):
            for example, algo in algos.items():
                start = time.perf_counter()
                result = algo.train()
                timers = result[TIMERS]  # the iteration's own seconds (FlowPPO.training_step)
                row = (time.perf_counter() - start, timers[ENV_RUNNER_SAMPLING_TIMER], timers[LEARNER_UPDATE_TIMER])
                row += (int(result["env_runners"]["num_env_steps_sampled"]),)
                print(f"  round {r + 1} {example}: {row[0]:.1f} s, {row[3]} policy steps", flush=True)
                if r > 0:
                    rows[example].append(row)
    finally:
        for algo in algos.values():
            algo.stop()
    first = np.mean([row[0] for row in rows[args.example[0]]])
    print("| example | s / iteration | sampling s | learner update s | policy steps / iteration | ratio |")
    print("|---|---|---|---|---|---|")
    for example, got in rows.items():
        wall, sampling, update, steps = (np.mean(column) for column in zip(*got))
        print(f"| {example} | {wall:.1f} | {sampling:.1f} | {update:.1f} | {steps:.0f} | {wall / first:.2f}× |")


if __name__ == "__main__":
    main()
