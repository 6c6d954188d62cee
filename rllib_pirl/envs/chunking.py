"""Action chunks: one policy step executes a chunk of per-step env actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class ActionChunkWrapper(gym.Wrapper):
    """Executes a (chunk, action_dim) action as up to ``chunk`` env steps.

    Rewards are summed, terminated/truncated are OR-ed and execution stops at the
    first done. ``info`` is the last step's, with ``chunk_steps`` (steps executed)
    and ``success`` OR-ed over the chunk when the env reports it.

    An env with an ``observe()`` method (:class:`~rllib_pirl.envs.maniskill.ManiSkillTaskEnv`)
    steps with ``observe=False`` and is observed once, after the chunk's last step: only that
    observation is returned, and a camera env then renders once per chunk, not per step.
    """

    def __init__(self, env: gym.Env, chunk: int):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"ActionChunkWrapper needs a 1-D Box action space, got {space}")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"action_chunk must be an integer >= 1, got {chunk!r}")
        max_steps = getattr(env.spec, "max_episode_steps", None) if env.spec else None
        if max_steps is not None and chunk > max_steps:
            raise ValueError(f"action_chunk={chunk} is longer than the episode limit ({max_steps} steps).")
        self.chunk = chunk
        self.action_space = gym.spaces.Box(
            low=np.broadcast_to(space.low, (chunk,) + space.shape).astype(space.dtype),
            high=np.broadcast_to(space.high, (chunk,) + space.shape).astype(space.dtype),
            dtype=space.dtype,
        )

    def step(self, action):
        action = np.asarray(action)
        if action.shape != self.action_space.shape:
            raise ValueError(f"Expected an action chunk of shape {self.action_space.shape}, got {action.shape}.")
        observe = getattr(self.env, "observe", None)
        total, success = 0.0, False
        for i in range(self.chunk):
            if observe is None:
                obs, reward, terminated, truncated, info = self.env.step(action[i])
            else:
                _, reward, terminated, truncated, info = self.env.step(action[i], observe=False)
            total += float(reward)
            success = success or bool(info.get("success", False))
            if terminated or truncated:
                break
        if observe is not None:
            obs = observe()
        info = dict(info, chunk_steps=i + 1)
        if "success" in info:
            info["success"] = success
        return obs, total, terminated, truncated, info
