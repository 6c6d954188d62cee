"""Evaluation protocol: the deterministic (ODE) policy on a fixed list of seeds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action


def env_creator_for(env) -> Callable[[dict], gym.Env]:
    """The creator of a Tune-registered env name, or ``gymnasium.make`` for an id."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if isinstance(env, str) and _global_registry.contains(ENV_CREATOR, env):
        return _global_registry.get(ENV_CREATOR, env)
    if isinstance(env, str) and env in gym.registry:
        return lambda config: gym.make(env, **(config or {}))
    if callable(env):
        return env
    raise ValueError(f"Unknown env {env!r}: neither registered with Ray Tune nor a gymnasium id.")


def evaluation_env_makers(env, env_config: dict) -> list[Callable[[], gym.Env]]:
    """Makers of the envs an evaluation runs on, one at a time: one per task for envs
    evaluated task by task (a ManiSkill suite, LIBERO), else the one env of ``env_config``."""
    import functools

    from rllib_pirl.envs import PER_TASK_ENV_MAKERS

    if isinstance(env, str) and env in PER_TASK_ENV_MAKERS:
        return PER_TASK_ENV_MAKERS[env](env_config)
    return [functools.partial(env_creator_for(env), env_config)]


def wilson_interval(successes: int, n: int, z: float = 1.96):
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (centre - half, centre + half)


@dataclass
class EvalResult:
    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # info["task"] of each episode, when the env reports it

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_ci95(self):
        """Normal-approximation 95% interval of the mean return."""
        n = len(self.returns)
        half = 1.96 * float(np.std(self.returns, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        return (self.mean_return - half, self.mean_return + half)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))

    @property
    def success_ci95(self):
        return wilson_interval(int(np.sum(self.successes)), len(self.successes))

    def extend(self, other: EvalResult) -> EvalResult:
        """Append the episodes of ``other`` (e.g. another task's)."""
        for name in ("returns", "successes", "lengths", "tasks"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def per_task(self):
        """{task: (episodes, success rate, 95% interval)} when the env reports tasks."""
        out = {}
        for task in sorted({t for t in self.tasks if t}):
            wins = [s for s, t in zip(self.successes, self.tasks) if t == task]
            out[task] = (len(wins), float(np.mean(wins)), wilson_interval(int(np.sum(wins)), len(wins)))
        return out

    def summary(self) -> str:
        lo, hi = self.return_ci95
        slo, shi = self.success_ci95
        lines = [
            f"episodes: {len(self.returns)}",
            f"mean return: {self.mean_return:.4f}  (95% CI {lo:.4f} .. {hi:.4f})",
            f"success rate: {self.success_rate:.4f}  (95% CI {slo:.4f} .. {shi:.4f})",
            f"mean episode length: {np.mean(self.lengths):.1f} policy steps",
        ]
        per_task = self.per_task()
        if len(per_task) > 1:
            for task, (n, rate, (tlo, thi)) in per_task.items():
                lines.append(f"  {task}: success {rate:.4f}  (95% CI {tlo:.4f} .. {thi:.4f}, {n} episodes)")
        return "\n".join(lines)


def _camera_frame(obs):
    """The camera images of an observation ((H, W, 3) uint8 entries) side by side, in
    key order (None without cameras)."""
    if not isinstance(obs, dict):
        return None
    images = [np.asarray(v) for _, v in sorted(obs.items()) if np.asarray(v).dtype == np.uint8 and np.ndim(v) == 3]
    return np.concatenate(images, axis=1) if images else None


def _write_video(frames, folder: str, name: str, fps: int = 5) -> None:
    import os

    import imageio

    os.makedirs(folder, exist_ok=True)
    imageio.mimsave(os.path.join(folder, name), frames, fps=fps, macro_block_size=1)


def _batch_of_one(obs):
    """An observation (array or dict of arrays) as a batch of one, in torch."""
    if isinstance(obs, dict):
        return {k: _batch_of_one(v) for k, v in obs.items()}
    return torch.as_tensor(np.asarray(obs)[None])


@torch.no_grad()
def evaluate(
    module,
    env: gym.Env,
    episodes: int,
    seed: int = 0,
    explore: bool = False,
    normalize_actions: bool = True,
    clip_actions: bool = False,
    progress=None,
    video_dir: str | None = None,
    video_episodes: int = 3,
) -> EvalResult:
    """Run ``episodes`` episodes, episode i reset with seed ``seed + i``.

    Deterministic policy (``forward_inference``) unless ``explore``. Actions go to the
    env as RLlib's env runners send them (``normalize_actions``: [−1, 1] → bounds;
    ``clip_actions``). An episode succeeds when any step's ``info["success"]`` is true.
    With ``video_dir`` and camera observations ((H, W, 3) uint8 entries), the first
    ``video_episodes`` episodes are written there as mp4 (the cameras side by side,
    one frame per policy step).
    """
    result = EvalResult()
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        total, success, steps, done = 0.0, bool(info.get("success", False)), 0, False
        frames = [] if video_dir and i < video_episodes and _camera_frame(obs) is not None else None
        while not done:
            if frames is not None:
                frames.append(_camera_frame(obs))
            batch = {Columns.OBS: _batch_of_one(obs)}
            out = module.forward_exploration(batch) if explore else module.forward_inference(batch)
            action = out[Columns.ACTIONS][0].cpu().numpy()
            if normalize_actions:
                action = unsquash_action(action, env.action_space)
            elif clip_actions:
                action = clip_action(action, env.action_space)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            success = success or bool(info.get("success", False))
            steps += 1
            done = terminated or truncated
        result.returns.append(total)
        result.successes.append(success)
        result.lengths.append(steps)
        result.tasks.append(info.get("task", ""))
        if frames:
            frames.append(_camera_frame(obs))
            task = f"{info['task']}_" if info.get("task") else ""
            _write_video(frames, video_dir, f"{task}episode_{seed + i}_{'success' if success else 'failure'}.mp4")
        if progress is not None:
            progress(i + 1, result)
    return result
