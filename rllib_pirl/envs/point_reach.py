"""PointReach: a small continuous-control task for CPU examples and tests.

A point in the plane must reach a random goal. Observation: (position, goal −
position); action: a velocity in [−1, 1]² (times ``speed`` per step). Reward: the
decrease of the distance to the goal each step, plus ``success_bonus`` when within
``goal_radius``, which ends the episode (terminated); episodes are truncated after
``max_episode_steps``. ``info["success"]`` tells whether the goal was reached.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np


class PointReachEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, speed: float = 0.1, goal_radius: float = 0.1, success_bonus: float = 1.0):
        self.speed, self.goal_radius, self.success_bonus = speed, goal_radius, success_bonus
        self.observation_space = gym.spaces.Box(-4.0, 4.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        return np.concatenate([self.pos, self.goal - self.pos]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, 1.0, 2)
        self.goal = self.np_random.uniform(-1.0, 1.0, 2)
        return self._obs(), {"success": False}

    def step(self, action):
        before = np.linalg.norm(self.goal - self.pos)
        self.pos = np.clip(self.pos + self.speed * np.clip(action, -1.0, 1.0), -2.0, 2.0)
        after = np.linalg.norm(self.goal - self.pos)
        success = bool(after < self.goal_radius)
        reward = float(before - after) + (self.success_bonus if success else 0.0)
        return self._obs(), reward, success, False, {"success": success}


gym.register("rllib_pirl/PointReach-v0", entry_point=PointReachEnv, max_episode_steps=50)
