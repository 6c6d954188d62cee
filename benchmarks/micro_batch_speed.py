"""Learner time per sample: each minibatch in micro-batches (gradients accumulated) vs whole.

Two algorithms that differ only in ``micro_batch_size`` update on the SAME sampled episodes
(one local learner, 1 epoch, minibatch ``--minibatch``): ``learner_group.update`` timed,
interleaved rounds, median of the per-round ratios micro / whole. The state flow policy on
PointReach with a ``--hidden`` MLP (the per-micro-batch Python overhead is largest for small
models; a π0's compute per sample dwarfs it). For scale, the same widths as a plain torch MLP:
forward + backward per row at the micro-batch size vs the minibatch size (the cost of smaller
matrix products on this CPU, which micro-batching cannot avoid).

    python benchmarks/micro_batch_speed.py [--hidden 256,256,256] [--batch 512] [--minibatch 128] [--micro 32]
    python benchmarks/micro_batch_speed.py --model pi0 [--depth 1] [--image 56] --batch 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from prefix_cache_speed import pi0_pickcube_algo, reduced_depth_pi0, timed_update

from rllib_pirl import FlowNoiseConfig, FlowSDEConfig


def build(cls, args, micro):
    """The state MLP on PointReach (``--hidden``), or π0 at its real widths with ``--depth``
    Gemma layers on ManiSkill PickCube with two cameras of ``--image`` px, the model's image
    size too (small: the prefix, computed once per train batch and kept, stays short; the
    expert's per-sample work — what micro-batching splits — keeps its real size)."""
    training = {
        "train_batch_size_per_learner": args.batch,
        "minibatch_size": args.minibatch,
        "num_epochs": 1,
        "micro_batch_size": micro,
    }
    if args.model == "pi0":
        return pi0_pickcube_algo(cls, args.image, reduced_depth_pi0(args.depth, 1, args.image), **training)
    hidden = [int(h) for h in args.hidden.split(",")]
    return (
        cls()
        .environment("PointReach")
        .training(action_chunk=4, **training)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8)
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": hidden, "value_hidden_sizes": hidden[:2]}})
        .debugging(seed=0)
        .build_algo()
    )


def plain_torch_ratio(hidden: list[int], minibatch: int, micro: int, rounds: int) -> float:
    """The same widths as a plain torch MLP: forward + backward of batches of ``micro`` vs
    ``minibatch`` rows, time per row (what smaller matrix products cost on this CPU alone)."""
    net = torch.nn.Sequential(*[torch.nn.Linear(hidden[0], h) for h in hidden])

    def per_row(batch: int) -> float:
        start = time.perf_counter()
        for _ in range(minibatch // batch):
            net(torch.randn(batch, hidden[0])).pow(2).mean().backward()
        return (time.perf_counter() - start) / minibatch

    per_row(minibatch)
    return statistics.median(per_row(micro) / per_row(minibatch) for _ in range(rounds))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", default="FlowNoise", choices=["FlowSDE", "FlowNoise"])
    p.add_argument("--model", default="mlp", choices=["mlp", "pi0"], help="state MLP on PointReach, or π0 widths")
    p.add_argument("--depth", type=int, default=1, help="π0: Gemma layers")
    p.add_argument("--image", type=int, default=56, help="π0: camera size")
    p.add_argument("--hidden", default="256,256,256")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--minibatch", type=int, default=128)
    p.add_argument("--micro", type=int, default=32)
    p.add_argument("--rounds", type=int, default=11)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() if args.model == "pi0" else 1)
    cls = {"FlowSDE": FlowSDEConfig, "FlowNoise": FlowNoiseConfig}[args.algorithm]
    whole, micro = build(cls, args, None), build(cls, args, args.micro)
    try:
        episodes = whole.env_runner.sample(num_timesteps=args.batch, explore=True)
        samples = sum(len(e) for e in episodes)
        times = {"whole": [], "micro": []}
        for r in range(args.rounds + 1):
            for name, algo in (("whole", whole), ("micro", micro)) if r % 2 else (("micro", micro), ("whole", whole)):
                t = timed_update(algo, episodes)
                if r:  # round 0 warms up
                    times[name].append(t)
        ratio = statistics.median(m / w for m, w in zip(times["micro"], times["whole"], strict=True))
        model = f"π0 real widths, depth {args.depth}" if args.model == "pi0" else f"MLP {args.hidden}"
        print(
            f"{args.algorithm}, {model}, {samples} samples, minibatch {args.minibatch}: "
            f"whole {1e6 * statistics.median(times['whole']) / samples:.0f} µs/sample, micro-batches of "
            f"{args.micro} {1e6 * statistics.median(times['micro']) / samples:.0f} µs/sample; "
            f"micro / whole = {ratio:.3f} (median of {args.rounds} interleaved rounds)"
        )
        if args.model == "pi0":
            return 0
        hidden = [int(h) for h in args.hidden.split(",")]
        print(
            f"plain torch MLP {args.hidden}, forward + backward per row, batch {args.micro} / batch {args.minibatch} = "
            f"{plain_torch_ratio(hidden, args.minibatch, args.micro, args.rounds):.3f}"
        )
    finally:
        whole.stop()
        micro.stop()


if __name__ == "__main__":
    sys.exit(main())
