"""Rollout overhead on ManiSkill (CPU backend): env steps/s sampled through RLlib with
the flow policy (Flow-SDE exploration, K = 4) relative to the same vector env stepped
by a zero-cost policy (constant actions, no RLlib). Target ≥ 0.7× with state
observations; the rgb figure beside it.

    source .vulkan/env.sh
    python benchmarks/maniskill_rollout.py [--num-envs 8] [--chunks 400] [--obs-mode state]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
import torch
from sampling import env_steps_per_s

from rllib_pirl import FlowSDEConfig
from rllib_pirl.envs.maniskill import make_maniskill_env


def raw_steps_per_s(env_config, num_envs, chunks, chunk):
    env = make_maniskill_env(dict(env_config, num_envs=num_envs))
    try:
        env.reset(seed=0)
        actions = np.zeros((num_envs, chunk, 4), np.float32)
        steps, start = 0, time.perf_counter()
        for _ in range(chunks // num_envs):
            _, _, _, _, info = env.step(actions)
            if "chunk_steps" in info:  # absent on steps where every sub-env autoresets
                steps += int(np.sum(info["chunk_steps"][info["_chunk_steps"]]))
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def rllib_steps_per_s(env_config, num_envs, chunks, chunk, hidden):
    config = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config=env_config)
        .training(action_chunk=chunk, num_denoise_steps=4, noise_level=0.1)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": hidden}})
    )
    algo = config.build_algo()
    try:
        return env_steps_per_s(algo, num_envs, chunks, chunk)
    finally:
        algo.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--chunks", type=int, default=400, help="policy steps (chunks) to time on each side")
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--obs-mode", default="state", choices=["state", "rgb", "state+rgb"])
    p.add_argument("--camera-size", type=int, default=64)
    p.add_argument("--hidden", default="256,256,256")
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env_config = {
        "task": "PickCube-v1",
        "obs_mode": args.obs_mode,
        "camera_size": args.camera_size,
        "action_chunk": args.chunk,
        "max_episode_steps": 100,
    }
    hidden = tuple(int(h) for h in args.hidden.split(","))
    if args.obs_mode != "state":
        print("note: the state MLP policy reads only the state entry; images still travel through RLlib")
    raw = raw_steps_per_s(env_config, args.num_envs, args.chunks, args.chunk)
    through, n = rllib_steps_per_s(env_config, args.num_envs, args.chunks, args.chunk, hidden)
    print(f"PickCube-v1 {args.obs_mode}, {args.num_envs} envs, chunk {args.chunk}, torch threads 1")
    print(f"zero-cost policy, vector env alone : {raw:8.1f} env steps/s")
    print(f"RLlib + Flow-SDE policy (K=4)      : {through:8.1f} env steps/s  ({n} policy steps)")
    print(f"ratio {through / raw:.3f}x  (target >= 0.7x for state observations)")


if __name__ == "__main__":
    main()
