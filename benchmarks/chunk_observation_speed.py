"""Camera envs: env steps/s when a chunk is observed once (after its last step, what
``ActionChunkWrapper`` does with a ManiSkill task env) against observed at every step (ManiSkill
renders both cameras for every observation; the inner steps' images are thrown away).

One ManiSkill PickCube-v1 task env per mode, one process, random chunks; the two modes
alternate in rounds so both see the same machine load. Prints both rates and their ratio.

    source .vulkan/env.sh
    python benchmarks/chunk_observation_speed.py [--camera-sizes 32,64] [--chunk 5] [--chunks 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv


def make(camera_size: int, chunk: int, every_step: bool) -> gym.Env:
    config = ManiSkillConfig.from_env_config(
        {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": camera_size, "action_chunk": chunk}
    )
    env = ManiSkillTaskEnv(config)
    # A plain gym.Wrapper hides ``observe``: the chunk wrapper then takes every step's observation.
    return ActionChunkWrapper(gym.Wrapper(env) if every_step else env, chunk)


def steps_per_s(env: gym.Env, chunks: int, rng: np.random.Generator) -> float:
    steps, start = 0, time.perf_counter()
    for _ in range(chunks):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        _, _, terminated, truncated, info = env.step(action)
        steps += info["chunk_steps"]
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camera-sizes", default="32,64")
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--chunks", type=int, default=20, help="chunks timed per mode and round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"PickCube-v1 rgb (base + hand camera), chunk {args.chunk}, one process", flush=True)
    for size in (int(s) for s in args.camera_sizes.split(",")):
        envs = {mode: make(size, args.chunk, mode == "every step") for mode in ("every step", "once per chunk")}
        rates: dict[str, list[float]] = {mode: [] for mode in envs}
        try:
            for mode, env in envs.items():
                env.reset(seed=0)
            for r in range(args.rounds):
                for mode, env in envs.items():
                    rates[mode].append(steps_per_s(env, args.chunks, np.random.default_rng(r)))
        finally:
            for env in envs.values():
                env.close()
        every, once = (float(np.mean(rates[m])) for m in ("every step", "once per chunk"))
        print(
            f"{size:3d} px: observed every step {every:6.1f} env steps/s, once per chunk {once:6.1f} env steps/s,"
            f" ratio {once / every:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
