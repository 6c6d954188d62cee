"""How far the states an env shows a policy lie outside the statistics its checkpoint was
normalised with: the normalised |z| = |(s − mean) / std| per state dim over a policy's rollouts.

A state dim whose demos barely varied (std clamped at sft.STD_FLOOR) but which varies in RL rollouts
reaches the network as a huge input, which makes a sharp policy; this checks for it. Runs
``--episodes`` episodes of the checkpoint's policy (exploring unless ``--deterministic``) from
seeds ``--seed``… and prints per dim the largest and the 99th-percentile |z|, the share of steps
with any |z| above 5, 10, 20, and that share in successful vs failed episodes.

    source .vulkan/env.sh
    python benchmarks/obs_coverage.py --checkpoint checkpoints/pickcube_sft150 --episodes 30
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch

from rllib_pirl.envs.maniskill import make_maniskill_env
from rllib_pirl.evaluation import evaluate, module_for_model
from rllib_pirl.sft import STD_FLOOR

PICKCUBE = {
    "task": "PickCube-v1",
    "obs_mode": "state",
    "control_mode": "pd_ee_delta_pos",
    "max_episode_steps": 100,
    "reward_mode": "pirl",
    "action_chunk": 5,
}


class RecordStates(gym.Wrapper):
    """Keeps every episode's states (the ``state`` entry of the observation)."""

    def __init__(self, env):
        super().__init__(env)
        self.episodes: list[list[np.ndarray]] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.episodes.append([obs["state"]])
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.episodes[-1].append(out[0]["state"])
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/pickcube_sft150", help="a state model checkpoint (rllib sft)")
    p.add_argument("--env-config", type=json.loads, default=PICKCUBE, help="ManiSkill env_config, JSON")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=500, help="first reset seed")
    p.add_argument("--deterministic", action="store_true", help="the ODE policy instead of the exploring one")
    args = p.parse_args()
    torch.set_num_threads(1)
    env = RecordStates(make_maniskill_env(args.env_config))
    module = module_for_model(args.checkpoint, env, 4)
    try:
        result = evaluate(module, env, args.episodes, seed=args.seed, explore=not args.deterministic)
    finally:
        env.close()
    mean, std = module.model.obs_mean.numpy(), module.model.obs_std.numpy()
    z = [np.abs((np.stack(states) - mean) / std) for states in env.episodes]
    every = np.concatenate(z)
    np.set_printoptions(precision=1, suppress=True, linewidth=200)
    print(
        f"{args.episodes} episodes ({'deterministic' if args.deterministic else 'exploring'}), success "
        f"{np.mean(result.successes):.3f}, {len(every)} states; dims with std at the {STD_FLOOR:g} floor: "
        f"{np.where(std <= STD_FLOOR * 1.01)[0].tolist()}"
    )
    print("largest |z| per dim:", every.max(0))
    print("99th percentile |z| per dim:", np.percentile(every, 99, axis=0))
    for threshold in (5, 10, 20):
        print(f"share of states with any |z| > {threshold}: {np.mean(every.max(1) > threshold):.3f}")
    for success in (True, False):
        part = [s for s, ok in zip(z, result.successes) if ok == success]
        if part:
            share = np.mean(np.concatenate(part).max(1) > 10)
            print(
                f"{'successful' if success else 'failed'} episodes ({len(part)}): share of states with |z| > 10 {share:.3f}"
            )


if __name__ == "__main__":
    main()
