"""ManiSkill's batched (GPU-parallel) simulation as an RLlib-ready vector env.

One process simulates ``num_envs`` copies of one task (``sim_backend="physx_cuda"``;
``"physx_cpu"`` allows ``num_envs=1`` and runs the same code, which is how the tests
check it on a CPU machine). Each ``step`` executes a whole action chunk for every env
(rewards summed, execution stops at the first done of each env: later steps of the
chunk are simulated for the batch but not counted for it).

ManiSkill's own vector wrapper resets finished envs in the same step (the final
observation moves into ``info``); RLlib 2.60 assumes gymnasium's *next-step* autoreset
and corrupts same-step ones. This env therefore converts: the step that ends an episode
returns the final observation (so RLlib bootstraps a truncation from it), and the next
``step`` returns that env's first observation of the new episode with reward 0 and no
done — its action is ignored. The reset is done by a partial reset (``env_idx``) *after*
the other envs executed that chunk, so the new episode starts exactly at its first
observation. Each episode starts at Φ_0 = 0 (see ``grasped_flags``); unlike the CPU
env, a partial reset cannot refresh one env's contacts, so with obs_mode "state" the
first observation after an episode that ended grasping can still read ``is_grasped``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rllib_pirl.envs.maniskill import (
    ManiSkillConfig,
    ManiSkillSetupError,
    ObsFormat,
    grasped_flags,
    maniskill_make_kwargs,
    pirl_potential,
)


def _numpy(x):
    """ManiSkill's batched tensors (any nesting of dicts) → numpy."""
    if isinstance(x, dict):
        return {k: _numpy(v) for k, v in x.items()}
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ManiSkillBatchedVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of one ManiSkill task in one batched simulation, chunked,
    with next-step autoreset (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, config: ManiSkillConfig, num_envs: int, sim_backend: str = "physx_cuda"):
        if len(config.tasks) != 1:
            raise ValueError(
                f"ManiSkill's batched GPU backend simulates one task per process, got {len(config.tasks)} tasks "
                f"({', '.join(config.tasks)}). Train one task per run on GPU, or set env_config.backend: cpu "
                "for a mixed suite."
            )
        if sim_backend == "physx_cpu" and num_envs != 1:
            raise ValueError("ManiSkill's CPU simulation holds one env per process: num_envs must be 1 on physx_cpu.")
        if sim_backend == "physx_cuda":
            import torch

            if not torch.cuda.is_available():
                raise ManiSkillSetupError(
                    "env_config.backend: gpu needs a CUDA device and a CUDA build of torch; this machine has none. "
                    "Use backend: auto (picks the CPU simulation here) or backend: cpu."
                )
        self.config, self.task = config, config.tasks[0]
        self.instructions = config.instruction_list()
        try:
            self.env = gym.make(self.task, num_envs=num_envs, **maniskill_make_kwargs(config, sim_backend))
        except RuntimeError as e:
            raise ManiSkillSetupError(f"Could not start ManiSkill's {sim_backend} simulation: {e}") from e
        self.num_envs, self.chunk = num_envs, config.action_chunk
        single_action = self.env.unwrapped.single_action_space
        self.single_action_space = gym.spaces.Box(
            np.broadcast_to(single_action.low, (self.chunk, *single_action.shape)).astype(np.float32),
            np.broadcast_to(single_action.high, (self.chunk, *single_action.shape)).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._raw_space = self.env.unwrapped.single_observation_space
        self.obs_format = ObsFormat(config, self._raw_space, 0)
        self.single_observation_space = self.obs_format.space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self._device = self.env.unwrapped.device
        self._pending = np.zeros(num_envs, bool)  # ended last step: reset at the end of this one
        self._grasp_steps = np.zeros(num_envs, int)
        self._potential = np.zeros(num_envs)

    # -- formatting -------------------------------------------------------------------
    def _format(self, raw) -> dict[str, np.ndarray]:
        """Batched raw observation → batched Dict observation (row by row)."""
        raw = _numpy(raw)
        rows = gym.vector.utils.iterate(gym.vector.utils.batch_space(self._raw_space, self.num_envs), raw)
        formatted = [self.obs_format(row) for row in rows]
        out = gym.vector.utils.create_empty_array(self.single_observation_space, self.num_envs)
        return gym.vector.utils.concatenate(self.single_observation_space, formatted, out)

    def _infos(self, success: np.ndarray, chunk_steps: np.ndarray) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            info = {"success": bool(success[i]), "task_id": 0, "task": self.task, "chunk_steps": int(chunk_steps[i])}
            infos = self._add_info(infos, info, i)
        return infos

    def _success(self, info_np) -> np.ndarray:
        return np.asarray(info_np.get("success", np.zeros(self.num_envs, bool)), bool).reshape(-1)

    def _potentials(self, info_np, rows) -> np.ndarray:
        """Φ of the given rows after a step (updates their grasp counters); ``info_np``
        is the batched info in numpy."""
        grasped = np.broadcast_to(grasped_flags(info_np), (self.num_envs,))[rows]
        self._grasp_steps[rows] = np.where(grasped, self._grasp_steps[rows] + 1, 0)
        return pirl_potential(grasped, self._grasp_steps[rows], self._success(info_np)[rows])

    # -- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        raw, _ = self.env.reset(seed=seed, options=options)
        self._grasp_steps[:], self._potential[:] = 0, 0.0  # Φ_0 = 0 (see grasped_flags)
        self._pending[:] = False
        return self._format(raw), self._infos(np.zeros(self.num_envs, bool), np.zeros(self.num_envs, int))

    def step(self, actions):
        import torch

        actions = np.asarray(actions, np.float32)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"Expected action chunks of shape {self.action_space.shape}, got {actions.shape}.")
        n = self.num_envs
        active = ~self._pending  # envs whose episode runs this step
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        success, chunk_steps = np.zeros(n, bool), np.zeros(n, int)
        final_raw = None
        for j in range(self.chunk):
            raw, reward, term, trunc, info = self.env.step(torch.as_tensor(actions[:, j], device=self._device))
            info_np = _numpy(info)
            step_success = self._success(info_np)
            rows = np.flatnonzero(active)
            if self.config.reward_mode == "pirl":
                potential = self._potentials(info_np, rows)
                rewards[rows] += potential - self._potential[rows]
                self._potential[rows] = potential
            elif self.config.reward_mode == "sparse":
                rewards[rows] += step_success[rows]
            else:
                rewards[rows] += _numpy(reward).reshape(-1)[rows]
            chunk_steps[rows] += 1
            success[rows] |= step_success[rows]
            term_np = _numpy(term).reshape(-1).astype(bool) | step_success
            terminated[rows] = term_np[rows]
            truncated[rows] = _numpy(trunc).reshape(-1).astype(bool)[rows] & ~terminated[rows]
            ended = rows[terminated[rows] | truncated[rows]]
            # Keep each env's observation from the step its episode ended (or the last).
            raw_np = _numpy(raw)
            if final_raw is None:
                final_raw = raw_np
            else:
                final_raw = _select_rows(final_raw, raw_np, rows)
            active[ended] = False
            if not active.any():
                break
        obs = self._format(final_raw)
        pending = np.flatnonzero(self._pending)
        if pending.size:  # next-step autoreset: first observation of the new episode
            raw, _ = self.env.reset(options={"env_idx": torch.as_tensor(pending, device=self._device)})
            self._grasp_steps[pending], self._potential[pending] = 0, 0.0
            reset_obs = self._format(raw)
            for key in obs:
                obs[key][pending] = reset_obs[key][pending]
            rewards[pending], terminated[pending], truncated[pending], success[pending] = 0.0, False, False, False
        self._pending = terminated | truncated
        return obs, rewards.astype(np.float32), terminated, truncated, self._infos(success, chunk_steps)

    def close_extras(self, **kwargs):
        # Also called (by gymnasium's __del__) when the constructor failed before making the env.
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None


def _select_rows(old, new, rows):
    """``old`` with the given batch rows taken from ``new`` (any nesting of dicts)."""
    if isinstance(old, dict):
        return {k: _select_rows(old[k], new[k], rows) for k in old}
    out = np.array(old, copy=True)
    out[rows] = new[rows]
    return out
