"""Time and peak memory of a few training iterations of a tuned example, in-process.

The algorithm runs in this process (``num_env_runners: 0``: the local env runner and
learner share it); simulators run in child processes. Prints seconds per iteration, policy
steps per second, this process's peak RSS and the largest child's (one simulator).

    source .vulkan/env.sh
    python benchmarks/example_footprint.py --example pi0_maniskill_cpu.yaml --iterations 3
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pickcube_learning import build_example_algo


def peak_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", required=True, help="a file name in tuned_examples/ or a path")
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    _, algo = build_example_algo(args.example)
    print(f"{args.example}: built; peak RSS so far {peak_mib(resource.RUSAGE_SELF):.0f} MiB", flush=True)
    times, steps = [], []
    try:
        for it in range(args.iterations):
            start = time.time()
            result = algo.train()
            times.append(time.time() - start)
            steps.append(int(result["env_runners"]["num_env_steps_sampled"]))
            print(
                f"  iter {it + 1}: {times[-1]:.1f} s, {steps[-1]} policy steps, success "
                f"{result['env_runners'].get('success_rate', float('nan')):.2f}",
                flush=True,
            )
    finally:
        algo.stop()  # the simulators exit: their peak RSS becomes readable
    later = times[1:] or times
    print(f"seconds per iteration{' (after the first)' if len(times) > 1 else ''}: {sum(later) / len(later):.1f}")
    print(f"policy steps per second: {sum(steps[-len(later) :]) / sum(later):.2f}")
    print(f"peak RSS, this process (module, learner, env runner): {peak_mib(resource.RUSAGE_SELF):.0f} MiB")
    print(f"peak RSS, largest child process (one simulator): {peak_mib(resource.RUSAGE_CHILDREN):.0f} MiB")


if __name__ == "__main__":
    main()
