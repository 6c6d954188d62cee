"""How much exploration noise each task of a suite gets, relative to its own actions.

The suite shares one policy, one noise setting and one action normalisation across
tasks whose motions differ in size. Along deterministic rollouts of a checkpoint
(``--episodes`` per task, seeds 100000…), each policy step also draws ``--samples``
exploration chunks for the same observation (the tuned example's exploration: noise
level, x0, K); per task and action group (position, rotation, gripper) it prints the
exploration std around the deterministic chunk, the deterministic action's mean size
|a|, and their ratio — both in the env's action units.

    source .vulkan/env.sh
    python benchmarks/suite_noise.py --example flow_sde_suite.yaml

With ``--levels 0.5 0.3 …`` it measures instead what that noise costs each task in success:
the deterministic policy and the exploration policy at each noise level, ``--episodes``
episodes per task on the same seeds (100000…), success with 95% intervals.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from pickcube_learning import load_example
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import unsquash_action

from rllib_pirl.evaluation import _batch_of_one, evaluate, evaluation_env_makers
from rllib_pirl.rl_module import FlowRLModule

GROUPS = {"position": slice(0, 3), "rotation": slice(3, 6), "gripper": slice(6, 7)}
MODULE_KEYS = ("num_denoise_steps", "action_chunk", "noise_level", "exploration_x0", "sde_steps", "exploration")


def task_noise(module, env, episodes: int, samples: int):
    """Per action group: (exploration std, mean |deterministic action|) over the steps of
    ``episodes`` deterministic episodes of ``env``."""
    stds, sizes = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=100_000 + i)
        done = False
        while not done:
            batch = {Columns.OBS: _batch_of_one(obs)}
            with torch.no_grad():
                det = module.forward_inference(batch)[Columns.ACTIONS][0].numpy()
                many = {
                    Columns.OBS: {k: v.repeat(samples, *[1] * (v.dim() - 1)) for k, v in batch[Columns.OBS].items()}
                }
                explore = module.forward_exploration(many)[Columns.ACTIONS].numpy()
            det_env = unsquash_action(det, env.action_space)
            explore_env = np.stack([unsquash_action(a, env.action_space) for a in explore])
            stds.append(explore_env.std(axis=0))  # (chunk, action_dim)
            sizes.append(np.abs(det_env))
            obs, _, terminated, truncated, _ = env.step(det_env)
            done = terminated or truncated
    std, size = np.concatenate(stds), np.concatenate(sizes)
    return {g: (float(std[:, s].mean()), float(size[:, s].mean())) for g, s in GROUPS.items() if s.start < std.shape[1]}


def task_success(model_config, env, episodes: int, levels: list[float]) -> list[str]:
    """Success of the deterministic policy, then of the exploration policy at each noise
    level, on the same seeds: "rate [lo, hi]" each."""
    cells = []
    for level in [None, *levels]:
        module = FlowRLModule(
            observation_space=env.observation_space,
            action_space=env.action_space,
            model_config=model_config if level is None else dict(model_config, noise_level=level),
        )
        module.eval()
        res = evaluate(module, env, episodes, seed=100_000, explore=level is not None)
        lo, hi = res.success_ci95
        cells.append(f"{res.success_rate:.2f} [{lo:.2f}, {hi:.2f}]")
    return cells


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", required=True, help="tuned example: a file name in tuned_examples/ or a path")
    p.add_argument("--checkpoint", help="model checkpoint (default: the example's init_checkpoint)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per task (with --levels: per task and policy)")
    p.add_argument("--samples", type=int, default=16, help="exploration chunks per observation")
    p.add_argument("--levels", type=float, nargs="+", help="measure success at these noise levels instead")
    p.add_argument("--tasks", nargs="+", help="only these tasks of the suite (e.g. PlaceSphere-v1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _, spec = load_example(args.example)
    config = spec["config"]
    model_config = {k: config[k] for k in MODULE_KEYS if k in config}
    model_config["init_checkpoint"] = args.checkpoint or config["model_config"]["init_checkpoint"]
    print(f"exploration of {model_config['init_checkpoint']}: {model_config}")
    if args.levels:
        print("task | deterministic | " + " | ".join(f"noise level {v}" for v in args.levels))
    else:
        print("task | group | exploration std | mean |a| (deterministic) | std / |a|")
    for make in evaluation_env_makers(spec["env"], dict(config["env_config"], action_chunk=config["action_chunk"])):
        env = make()
        try:
            task = env.unwrapped.task if hasattr(env.unwrapped, "task") else "env"
            if args.tasks and task not in args.tasks:  # made as part of the suite: its task id, state size
                continue
            if args.levels:
                print(
                    f"{task} | " + " | ".join(task_success(model_config, env, args.episodes, args.levels)), flush=True
                )
                continue
            module = FlowRLModule(
                observation_space=env.observation_space, action_space=env.action_space, model_config=model_config
            )
            module.eval()
            for group, (std, size) in task_noise(module, env, args.episodes, args.samples).items():
                print(f"{task} | {group} | {std:.4f} | {size:.4f} | {std / max(size, 1e-8):.2f}", flush=True)
        finally:
            env.close()


if __name__ == "__main__":
    main()
