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
  about a train batch of complete groups.
"""

from __future__ import annotations

from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.annotations import override

from rllib_pirl.envs.workers import RUNNER_SLOT

#: env-runner metrics of GRPO's groups (per sampling call, summed over an iteration)
GRPO_COUNTS = ("groups_completed", "groups_trained", "groups_filtered", "groups_unusable", "groups_abandoned")


class FlowEnvRunner(SingleAgentEnvRunner):
    """``SingleAgentEnvRunner`` that tells the env creator its slot among the sampling runners,
    and samples GRPO's groups."""

    _groups = None  # GroupBuffer with GRPO

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

    @override(SingleAgentEnvRunner)
    def sample(self, **kwargs):
        chunks = super().sample(**kwargs)
        if self._groups is None:
            return chunks
        self._groups.add(chunks)
        ready = self._groups.pop_ready()
        stats = self._groups.take_stats()
        for key in GRPO_COUNTS:
            self.metrics.log_value(("grpo", key), stats[key], reduce="sum", clear_on_reduce=True)
        if stats["groups_completed"]:
            rate = stats["group_success_sum"] / stats["groups_completed"]
            self.metrics.log_value(("grpo", "group_success_rate"), rate, window=20)
        self.metrics.log_value(("grpo", "groups_waiting"), len(self._groups), window=1)
        return ready
