"""The env runner of the πRL algorithms: RLlib's ``SingleAgentEnvRunner``, plus the one
thing a multi-task vector env needs to spread its tasks over env runners — which runner
it runs in.

RLlib calls a registered vector env's creator with ``EnvContext | {"num_envs": n}``, a plain
dict: ``worker_index`` is lost on the way. While this runner makes its env,
:data:`rllib_pirl.envs.workers.RUNNER_SLOT` holds the runner's slot (0 .. number of
sampling runners − 1), so that sub-env i of runner r runs task ``(r · n + i) mod #tasks``.
"""

from __future__ import annotations

from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.annotations import override

from rllib_pirl.envs.workers import RUNNER_SLOT


class FlowEnvRunner(SingleAgentEnvRunner):
    """``SingleAgentEnvRunner`` that tells the env creator its slot among the sampling runners."""

    @property
    def slot(self) -> int:
        """Remote runners are numbered 1..N (they sample), the local one 0 (it samples only
        when there are no remote ones)."""
        return max((self.worker_index or 0) - 1, 0)

    @override(SingleAgentEnvRunner)
    def make_env(self) -> None:
        token = RUNNER_SLOT.set(self.slot)
        try:
            super().make_env()
        finally:
            RUNNER_SLOT.reset(token)
