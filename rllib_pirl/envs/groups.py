"""Groups of episodes that start from the same initial state, for GRPO.

The sub-envs of one env runner's vector env form pools of ``group_size`` consecutive sub-envs
(sub-env ``i`` of runner slot ``r`` is in pool ``g = (r·num_envs + i) // group_size``;
multi-task envs give a pool one task). Pool ``g`` hands out its episodes in rounds: the next
``group_size`` episodes that start in the pool (whichever sub-envs finish first) form group
``(g, k)`` and all reset with the seed ``seed(base, g, k)``, so they start from one initial
state; then round ``k + 1``. A group's episodes thus start within about one episode of each
other (no sub-env drifts ahead of its group), although they finish at different times.

With RLlib's next-step autoreset the vector env resets a finished sub-env inside its next
``step``, without a seed: :class:`GroupedResets` (in the env runner's process) hands the seed of
that reset to the sub-env beforehand (:class:`SeededResets`, the sub-env's outermost wrapper,
in its worker process) and marks each episode's reset info with its group (:data:`GROUP_KEY`).
An episode whose reset could not be seeded (its simulator was restarted) is marked
:data:`UNSEEDED`, and its group is not used.
"""

from __future__ import annotations

import secrets

import gymnasium as gym
import numpy as np

#: reset-info key of an episode's group: ``group << 32 | k`` (episode k of group ``group``)
GROUP_KEY = "grpo_group"
#: reset-info key of an episode whose reset could not be given its group's seed
UNSEEDED = "grpo_unseeded"


def group_seed(base: int, group: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of every member of group ``group``."""
    return int(np.random.SeedSequence([base, group, episode]).generate_state(1)[0])


def group_key(group: int, episode: int) -> int:
    return (group << 32) | episode


class SeededResets(gym.Wrapper):
    """A sub-env whose next unseeded ``reset()`` (the vector env's autoreset) uses
    ``next_reset_seed`` when one was set (once); explicit seeds pass through."""

    next_reset_seed: int | None = None

    def reset(self, *, seed=None, options=None):
        if seed is None and self.next_reset_seed is not None:
            seed = self.next_reset_seed
        self.next_reset_seed = None
        return self.env.reset(seed=seed, options=options)


class GroupedResets(gym.vector.VectorWrapper):
    """A next-step-autoreset vector env whose sub-envs reset in groups (module docstring):
    every reset is seeded by its group's schedule and its info carries :data:`GROUP_KEY`.

    ``first_sub_env``: the index of sub-env 0 among all env runners' sub-envs (slot ·
    num_envs), so that group numbers are unique across runners. Works on gymnasium's
    ``SyncVectorEnv`` (its sub-envs get wrapped here) and on
    :class:`~rllib_pirl.envs.workers.RestartingAsyncVectorEnv` (whose sub-envs are made with
    :class:`SeededResets`)."""

    def __init__(self, env: gym.vector.VectorEnv, group_size: int, first_sub_env: int = 0):
        from rllib_pirl.envs.workers import RestartingAsyncVectorEnv

        super().__init__(env)
        vec = env.unwrapped
        if isinstance(vec, gym.vector.SyncVectorEnv):
            vec.envs = [e if isinstance(e, SeededResets) else SeededResets(e) for e in vec.envs]
        elif not isinstance(vec, RestartingAsyncVectorEnv):
            raise TypeError(
                f"GRPO needs resets it can seed per sub-env; {type(vec).__name__} cannot (use the CPU simulator: "
                "ManiSkill env_config.backend: cpu, or gym_env_vectorize_mode: sync)."
            )
        if getattr(vec, "autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP) != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError("GRPO's grouped resets need a vector env with next-step autoreset (RLlib's).")
        if self.num_envs % group_size:
            raise ValueError(f"num_envs_per_env_runner={self.num_envs} is not a multiple of group_size={group_size}.")
        self.groups = np.array([(first_sub_env + i) // group_size for i in range(self.num_envs)], dtype=np.int64)
        self.group_size = group_size
        self.episodes = np.zeros(self.num_envs, dtype=np.int64)  # the round of each sub-env's episode
        self._starts: dict[int, int] = dict.fromkeys(self.groups.tolist(), 0)  # episodes started per pool
        self.base_seed: int | None = None
        self._starting = np.zeros(self.num_envs, bool)  # sub-envs whose next step starts an episode
        self._restarted = np.zeros(self.num_envs, bool)  # … from a restarted simulator's (unseeded) reset

    def _start(self, index: int) -> int:
        """Sub-env ``index`` starts an episode: the round of its pool it joins; its seed."""
        pool = int(self.groups[index])
        self.episodes[index] = self._starts[pool] // self.group_size
        self._starts[pool] += 1
        return group_seed(self.base_seed, pool, int(self.episodes[index]))

    def _mark(self, infos: dict, starting: np.ndarray, unseeded: np.ndarray) -> dict:
        keys = np.array([group_key(int(g), int(k)) for g, k in zip(self.groups, self.episodes)], dtype=np.int64)
        infos = dict(infos, **{GROUP_KEY: keys, f"_{GROUP_KEY}": starting.copy()})
        if unseeded.any():
            infos.update({UNSEEDED: unseeded.copy(), f"_{UNSEEDED}": unseeded.copy()})
        return infos

    def reset(self, *, seed=None, options=None):
        """All sub-envs start a new episode: each pool begins a new round (rounds realign after
        any vector reset). ``seed`` (RLlib's, on the first reset) is the base of the seeds."""
        if seed is not None:
            self.base_seed = int(seed)
        elif self.base_seed is None:
            self.base_seed = secrets.randbelow(2**31)
        for pool, starts in self._starts.items():
            self._starts[pool] = -(-starts // self.group_size) * self.group_size
        self._starting[:] = False
        self._restarted[:] = False
        seeds = [self._start(i) for i in range(self.num_envs)]
        obs, infos = self.env.reset(seed=seeds, options=options)
        return obs, self._mark(infos, np.ones(self.num_envs, bool), np.zeros(self.num_envs, bool))

    def step(self, actions):
        from rllib_pirl.envs.workers import RESTARTED

        starting, restarted = self._starting, self._restarted
        seeds = [self._start(i) if starting[i] else None for i in range(self.num_envs)]
        # A restarted simulator's new episode began at its (unseeded) restart: no seed to hand.
        seeds = [None if restarted[i] else seed for i, seed in enumerate(seeds)]
        if any(seed is not None for seed in seeds):
            self.env.set_attr("next_reset_seed", seeds)
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        self._starting = np.logical_or(terminated, truncated)
        no = np.zeros(self.num_envs, bool)
        self._restarted = np.asarray(infos.get(RESTARTED, no), bool) & np.asarray(infos.get(f"_{RESTARTED}", no), bool)
        return obs, rewards, terminated, truncated, self._mark(infos, starting, starting & restarted)
