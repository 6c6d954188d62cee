"""Learner time per sample: π0's frozen prefix kept for the update vs recomputed.

Two Flow-SDE algorithms that differ only in ``prefix_cache`` ("device" vs "off") update on
the SAME sampled episodes (ManiSkill PickCube, two cameras at ``--image`` px, one local
learner, ``--epochs`` epochs of 2 minibatches): ``learner_group.update`` timed, interleaved
rounds, median of the per-round ratios cached / recomputed. The model has π0's real widths
(SigLIP So400m, Gemma 2B VLM, Gemma 300M expert, chunk 50, 32-D) at reduced depth
(``--depth`` Gemma layers, ``--vision-depth`` SigLIP layers; the real 18 : 27 ratio kept
roughly) and a small vocabulary (the embedding lookup costs nothing), random weights, fp32
(this CPU has no fast bf16). Recomputed, the prefix runs 1 (V_old) + 1 (GAE) + epochs
times per sample before this change, 1 + epochs with GAE's values handed over; kept: once.

    python benchmarks/prefix_cache_speed.py [--depth 1] [--vision-depth 2] [--image 224] [--samples 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from rllib_pirl import FlowSDEConfig
from rllib_pirl.models.pi0 import PiConfig
from rllib_pirl.models.pi0.config import GEMMA_SIZES, VisionSize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_PATH = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")


def reduced_depth_pi0(depth: int, vision_depth: int, image_size: int = 224) -> dict:
    """π0's real widths with ``depth`` Gemma layers and ``vision_depth`` SigLIP layers (and
    ``image_size`` px images: 224 gives the real prefix of 256 tokens per camera)."""
    vlm, expert = (vars(GEMMA_SIZES[name]) | {"depth": depth} for name in ("gemma_2b", "gemma_300m"))
    vision = VisionSize(depth=vision_depth, image_size=image_size)
    return PiConfig(vlm=vlm, expert=expert, vision=vision, vocab_size=512).to_dict()


def pi0_pickcube_algo(cls, image: int, pi_config: dict, **training):
    """``cls`` (a FlowPPO config) with a π0 of ``pi_config`` on ManiSkill PickCube with two
    ``image``-px cameras, one local env, chunk 5, ``training`` keys; built."""
    return (
        cls()
        .environment("ManiSkill", env_config={"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": image})
        .training(action_chunk=5, **training)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .rl_module(
            model_config={
                "model_class": "rllib_pirl.models.pi0:PiPolicy",
                "model_kwargs": {"pi_config": pi_config, "tokenizer": TOKENIZER_PATH},
                "init_seed": 0,
            }
        )
        .debugging(seed=0)
        .build_algo()
    )


def build(args, prefix_cache: str):
    return pi0_pickcube_algo(
        FlowSDEConfig,
        args.image,
        reduced_depth_pi0(args.depth, args.vision_depth),
        train_batch_size_per_learner=args.samples,
        minibatch_size=args.samples // 2,
        num_epochs=args.epochs,
        prefix_cache=prefix_cache,
    )


def timed_update(algo, episodes) -> float:
    """Seconds of one ``learner_group.update`` on ``episodes`` with the algorithm's epochs and minibatch."""
    start = time.perf_counter()
    algo.learner_group.update(
        episodes=episodes, timesteps={}, num_epochs=algo.config.num_epochs, minibatch_size=algo.config.minibatch_size
    )
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cached, recomputed = build(args, "device"), build(args, "off")
    try:
        start = time.perf_counter()
        episodes = cached.env_runner.sample(num_timesteps=args.samples, explore=True)
        rows = sum(len(e) + 1 for e in episodes)  # + the bootstrap step RLlib adds per episode chunk
        print(f"sampled {sum(len(e) for e in episodes)} steps in {time.perf_counter() - start:.0f} s", flush=True)
        times = {"cached": [], "recomputed": []}
        for r in range(args.rounds):
            order = (("cached", cached), ("recomputed", recomputed))
            for name, algo in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed_update(algo, episodes))
                print(f"round {r}: {name} {times[name][-1]:.1f} s", flush=True)
        ratio = statistics.median(c / u for c, u in zip(times["cached"], times["recomputed"], strict=True))
        print(
            f"π0 real widths, depth {args.depth} (vision {args.vision_depth}), {args.image} px x 2 cameras, "
            f"{rows} rows, {args.epochs} epochs: recomputed {statistics.median(times['recomputed']) / rows:.2f} "
            f"s/row, cached {statistics.median(times['cached']) / rows:.2f} s/row; cached / recomputed = "
            f"{ratio:.3f} (median of {args.rounds} interleaved rounds)"
        )
    finally:
        cached.stop()
        recomputed.stop()


if __name__ == "__main__":
    sys.exit(main())
