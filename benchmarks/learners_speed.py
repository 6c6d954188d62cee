"""Training throughput with 1 vs 2 learners (RLlib's DDP over gloo) on this machine.

The PointReach Flow-SDE tuned example (state MLP, local sampling), the same total batch and
minibatch: ``num_learners: 0`` (the learner in the training process), ``1`` (one remote
learner) and ``2`` (two remote learners, half the batch each, gradients averaged). Reported:
samples (policy steps) per second of ``algo.train()`` (sampling and
updating; the same total batch of 512 in each setup) over ``--iterations`` iterations after one
warm-up, median of interleaved rounds. On 2 CPU cores this is informational: the learners,
the sampling and the driver share the cores, so more learners cannot be faster here; on GPU
nodes each learner has its own GPU.

With ``--learn-seeds N``: instead, N training seeds of the local and the 2-learner setup, 40
iterations each, then the deterministic policy's mean return on 100 fixed seeds (1000..1099,
as tests/test_learning.py): does a 2-learner run learn like a 1-learner one?

    python benchmarks/learners_speed.py [--iterations 10] [--rounds 3]
    python benchmarks/learners_speed.py --learn-seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import ray
import torch
from pickcube_learning import load_example

from rllib_pirl.experiments import build_config, resolve_algorithm

EXAMPLE = "flow_sde_point_reach.yaml"
SETUPS = {
    "0 (local)": {"num_learners": 0},
    "1 remote": {"num_learners": 1, "num_cpus_per_learner": 0.5},
    "2 remote": {
        "num_learners": 2,
        "num_cpus_per_learner": 0.5,
        "train_batch_size_per_learner": 256,
        "minibatch_size": 64,
    },
}


def throughput(overrides: dict, iterations: int) -> float:
    name, spec = load_example(EXAMPLE)
    algo_cls = resolve_algorithm(spec["run"])
    algo = build_config(algo_cls, spec["env"], dict(spec["config"], **overrides), name).build_algo()
    try:
        algo.train()  # warm-up
        start = time.perf_counter()
        for _ in range(iterations):
            algo.train()
        return iterations * algo.config.total_train_batch_size / (time.perf_counter() - start)
    finally:
        algo.stop()


def final_return(overrides: dict, seed: int, iterations: int = 40) -> float:
    from rllib_pirl.envs import make_point_reach
    from rllib_pirl.evaluation import evaluate

    name, spec = load_example(EXAMPLE)
    algo_cls = resolve_algorithm(spec["run"])
    algo = build_config(algo_cls, spec["env"], dict(spec["config"], seed=seed, **overrides), name).build_algo()
    try:
        for _ in range(iterations):
            algo.train()
        return evaluate(algo.get_module(), make_point_reach(dict(algo.config.env_config)), 100, seed=1000).mean_return
    finally:
        algo.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--learn-seeds", type=int, default=0, help="compare learning over this many seeds instead")
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    if args.learn_seeds:
        finals = {k: [] for k in ("0 (local)", "2 remote")}
        for seed in range(args.learn_seeds):
            for name, values in finals.items():
                values.append(final_return(SETUPS[name], seed))
                print(f"seed {seed}: learners {name}: mean return {values[-1]:.3f}", flush=True)
        for name, values in finals.items():
            print(
                f"learners {name:9s}: mean return {statistics.mean(values):.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})"
            )
        return
    rows = {k: [] for k in SETUPS}
    for r in range(args.rounds):
        for name in SETUPS if r % 2 == 0 else reversed(SETUPS):
            rows[name].append(throughput(SETUPS[name], args.iterations))
            print(f"round {r}: {name} learners {rows[name][-1]:.0f} samples/s", flush=True)
    base = rows["0 (local)"]
    for name, values in rows.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"learners {name:9s}: {statistics.median(values):7.0f} samples/s  ({ratio:.2f}x local)")


if __name__ == "__main__":
    sys.exit(main())
