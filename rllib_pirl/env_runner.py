"""The env runner of the πRL algorithms: RLlib's ``SingleAgentEnvRunner``, plus

- which runner it runs in, for a multi-task vector env to spread its tasks over env runners:
  RLlib calls a registered vector env's creator with ``EnvContext | {"num_envs": n}``, a plain
  dict, so ``worker_index`` is lost on the way; while this runner makes its env,
  :data:`rllib_pirl.envs.workers.RUNNER_SLOT` holds the runner's slot (0 .. number of sampling
  runners − 1), so that sub-env i of runner r runs task ``(r · n + i) mod #tasks``;
- GRPO (``advantage_estimator: grpo``): the vector env resets in groups
  (:class:`~rllib_pirl.envs.groups.GroupedResets`) and ``sample()`` returns the episode chunks
  of the groups that are complete, with their advantages
  (:class:`~rllib_pirl.algorithms.grpo.GroupBuffer`); the others wait for the next call.
  PPO's training step samples until the runners stepped a train batch, so it then updates on
  about a train batch of complete groups;
- reset seeds that never repeat another runner's, another training seed's, an earlier part of
  the run's or an env's that RLlib rebuilt or restarted episodes (:func:`reset_seeds`).
"""

from __future__ import annotations

import numpy as np
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.debug import update_global_seed_if_necessary

from rllib_pirl.envs.workers import RUNNER_SLOT

#: env-runner metrics of GRPO's groups (per sampling call, summed over an iteration)
GRPO_COUNTS = ("groups_completed", "groups_trained", "groups_filtered", "groups_unusable", "groups_abandoned")


def reset_seeds(seed: int, runner: int, evaluation: bool, count: int, part: int = 0, rebuild: int = 0) -> list[int]:
    """``count`` independent seeds of one env runner: ``SeedSequence([seed, runner, evaluation,
    part] + ([rebuild] if rebuild else [])).generate_state(count)``, one per sub-env (the first
    reset; a sub-env's later resets follow from it).

    RLlib seeds a runner's vector env with ``seed + worker_index`` and gymnasium gives sub-env
    i ``that + i``: runners r and r + 1 of a run, and the runs of training seeds s and s + 1,
    then share all but one sub-env's stream of initial states. ``part`` is the iteration a run
    was restored at (0 when it started): a run continued from its checkpoint draws new
    episodes instead of replaying its first ones. ``rebuild`` numbers the runner's later envs
    within a part (RLlib rebuilds a runner's vector env after a failed step, and restarts a
    failed runner process, and reseeds the new one with the runner's first seeds)."""
    entropy = [seed, runner, int(evaluation), part] + ([rebuild] if rebuild else [])
    return [int(s) for s in np.random.SeedSequence(entropy).generate_state(count)]


class FlowEnvRunner(SingleAgentEnvRunner):
    """``SingleAgentEnvRunner`` that tells the env creator its slot among the sampling runners,
    samples GRPO's groups, and seeds its sub-envs with :func:`reset_seeds`."""

    _groups = None  # GroupBuffer with GRPO
    _part = 0  # the iteration the run was restored at (continue_seeds)
    _restarts = 0  # the run's count of restored env runners when this process was restored (0: not a restart)
    _builds = 0  # make_env calls in this process (RLlib rebuilds the env after a failed step)

    @property
    def slot(self) -> int:
        """Remote runners are numbered 1..N (they sample), the local one 0 (it samples only
        when there are no remote ones)."""
        return max((self.worker_index or 0) - 1, 0)

    @property
    def grouped(self) -> bool:
        return getattr(self.config, "advantage_estimator", "gae") == "grpo" and not self.config.in_evaluation

    @override(SingleAgentEnvRunner)
    def make_env(self) -> None:
        token = RUNNER_SLOT.set(self.slot)
        try:
            super().make_env()
        finally:
            RUNNER_SLOT.reset(token)
        if self.grouped:
            from rllib_pirl.algorithms.grpo import GroupBuffer
            from rllib_pirl.envs.groups import GroupedResets

            # Inside RLlib's DictInfoToList (a new outer wrapper would close the vector env when
            # the replaced one is garbage-collected).
            self.env.env = GroupedResets(self.env.env, self.config.group_size, self.slot * self.num_envs)
            self._groups = GroupBuffer(self.config.group_size, self.config.grpo_success_filter)
        self._builds += 1
        if self.config.seed is not None:
            self._seed = self._seeds()[0]

    def _seeds(self) -> tuple[list[int] | int, int]:
        """``(what RLlib's next seeded reset of the vector env gets, the exploration noise's
        seed)`` of this part, process restart and env build: a seed per sub-env (GRPO's grouped
        resets draw all their groups' seeds from one base), and the word after them
        (``generate_state``'s words do not depend on the count)."""
        rebuild = (self._restarts << 16) + self._builds - 1
        words = reset_seeds(
            self.config.seed, self.worker_index or 0, self.config.in_evaluation, self.num_envs + 1, self._part, rebuild
        )
        return (words[0] if self._groups is not None else words[:-1]), words[-1]

    def continue_seeds(self, part: int, restarts: int = 0) -> None:
        """A runner that has not sampled yet (a new process, which RLlib seeds as at the run's
        start) takes the seeds for its sub-envs and its exploration noise (torch, numpy, random)
        of ``part`` — the iteration the algorithm was restored at, or had reached when it
        restarted this runner's failed process (``restarts``: the run's count of restored
        runners then, different for every restart). A runner that has
        sampled already (PBT reusing a trial's actors) goes on with its own streams."""
        if self.config.seed is None or not self._needs_initial_reset:
            return
        self._part, self._restarts = part, restarts
        self._seed, noise_seed = self._seeds()
        update_global_seed_if_necessary(self.config.framework_str, noise_seed)

    @override(SingleAgentEnvRunner)
    def sample(self, **kwargs):
        chunks = super().sample(**kwargs)
        if self._groups is None:
            return chunks
        self._groups.add(chunks)
        ready = self._groups.pop_ready()
        stats = self._groups.take_stats()
        for key in GRPO_COUNTS:
            self.metrics.log_value(("grpo", key), stats[key], reduce="sum")
        for key in [k for k in stats if "/" in k]:  # multi-task envs: grpo/trained_per_task/<task>, ...
            self.metrics.log_value(("grpo", *key.split("/", 1)), stats[key], reduce="sum")
        if stats["groups_completed"]:
            rate = stats["group_success_sum"] / stats["groups_completed"]
            self.metrics.log_value(("grpo", "group_success_rate"), rate, window=20)
        self.metrics.log_value(("grpo", "groups_waiting"), len(self._groups), window=1)
        return ready
