"""LIBERO with rendering: env steps/s sampled through RLlib (Flow-SDE exploration, K = 4)
relative to the same vector env stepped by a zero-cost policy (constant actions, no RLlib);
memory per env worker process; time per evaluation episode (deterministic policy, one
task, the suite's full step limit when the episode fails).

    python benchmarks/libero_rollout.py [--num-envs 2] [--chunks 60] [--camera-size 128] [--model mlp|pi0]

``--model mlp``: the state MLP flow policy (reads the 8-D state; the images still travel
through RLlib), which isolates RLlib's own overhead; ``pi0``: the tiny π0 (both cameras,
state, instruction) with a tokenizer trained on the spot.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import psutil
import ray
import torch
from sampling import env_steps_per_s

from rllib_pirl import FlowSDEConfig
from rllib_pirl.envs.libero import LiberoConfig, all_instructions, make_libero_env, make_task_env
from rllib_pirl.evaluation import evaluate


def raw_steps_per_s(env, num_envs, chunks, chunk):
    """Env steps/s of the vector env alone, stepped with constant actions."""
    actions = np.zeros((num_envs, chunk, 7), np.float32)
    actions[..., -1] = -1.0
    steps, start = 0, time.perf_counter()
    for _ in range(max(1, chunks // num_envs)):
        _, _, _, _, info = env.step(actions)
        if "chunk_steps" in info:
            steps += int(np.sum(info["chunk_steps"][info["_chunk_steps"]]))
    return steps / (time.perf_counter() - start)


def model_config(model: str, tokenizer: str | None):
    if model == "mlp":
        return {"model_kwargs": {"hidden_sizes": (256, 256, 256)}}
    from rllib_pirl.models.pi0 import PiConfig

    return {
        "model_class": "rllib_pirl.models.pi0:PiPolicy",
        "model_kwargs": {"pi_config": PiConfig.tiny("pi0", chunk_size=5).to_dict(), "tokenizer": tokenizer},
    }


def seconds_per_eval_episode(module, env_config, episodes):
    """Deterministic episodes of task 0 from its first initial states, one env."""
    env = make_task_env(LiberoConfig.from_env_config(dict(env_config, init_states="ordered")), 0)
    try:
        start = time.perf_counter()
        result = evaluate(module, env, episodes, seed=0)
        return (time.perf_counter() - start) / episodes, result
    finally:
        env.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--chunks", type=int, default=40, help="policy steps (chunks) to time on each side per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--camera-size", type=int, default=128)
    p.add_argument("--model", default="mlp", choices=["mlp", "pi0"])
    p.add_argument("--eval-episodes", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env_config = {"suite": args.suite, "tasks": "all", "camera_size": args.camera_size, "action_chunk": args.chunk}
    tokenizer = None
    if args.model == "pi0":
        from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

        tokenizer = train_tiny_tokenizer(os.path.join(tempfile.mkdtemp(), "tok.model"), all_instructions(), 500)
    config = (
        FlowSDEConfig()
        .environment("LIBERO", env_config=env_config)
        .training(action_chunk=args.chunk, num_denoise_steps=4, noise_level=0.5)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.num_envs)
        .rl_module(model_config=model_config(args.model, tokenizer))
    )
    algo = config.build_algo()
    raw_env = make_libero_env(dict(env_config, num_envs=args.num_envs))
    try:
        raw_env.reset(seed=0)
        rounds = []
        for r in range(args.rounds):  # each side back to back in every round
            raw = raw_steps_per_s(raw_env, args.num_envs, args.chunks, args.chunk)
            through, n = env_steps_per_s(algo, args.num_envs, args.chunks, args.chunk)
            rounds.append((raw, through))
            print(f"round {r + 1}: env alone {raw:.2f}, through RLlib {through:.2f} env steps/s ({n} policy steps)")
        workers = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in raw_env.processes]
        per_episode, result = seconds_per_eval_episode(algo.get_module(), env_config, args.eval_episodes)
    finally:
        raw_env.close()
        algo.stop()
    raws, throughs = np.array(rounds).T
    steps = np.mean(result.lengths) * args.chunk
    print(
        f"{args.suite}, {args.num_envs} env processes, cameras {args.camera_size}px, chunk {args.chunk}, torch 1 thread"
    )
    print(f"zero-cost policy, vector env alone  : {np.median(raws):7.2f} env steps/s (median of {args.rounds} rounds)")
    print(f"RLlib + Flow-SDE ({args.model}, K=4)        : {np.median(throughs):7.2f} env steps/s")
    print(f"ratio {np.median(throughs / raws):.3f}x (median of the per-round ratios; target >= 0.9x)")
    print(f"memory per env worker process: {', '.join(f'{m:.0f}' for m in workers)} MiB (RSS)")
    print(
        f"evaluation: {per_episode:.1f} s per episode ({args.eval_episodes} episodes of task 0, about {steps:.0f} env "
        f"steps each, success {result.success_rate:.2f}; untrained policy)"
    )


if __name__ == "__main__":
    main()
