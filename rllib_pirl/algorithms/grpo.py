"""GRPO's advantages: episodes in groups that share an initial state, each episode's
return against its group's (``advantage_estimator: grpo``).

The env side (which sub-envs form a group, the seeded resets, the group key in each
episode's reset info) is :mod:`rllib_pirl.envs.groups`. Here, in the algorithm's process,
:class:`GroupBuffer` collects the episode chunks RLlib samples — an episode's chunks may come
in several sampling rounds, and a group's members finish at different times — until a group
has its ``group_size`` finished episodes; then every step of each member gets the member's
advantage (:func:`group_advantages`), written into its info dicts (which survive RLlib's
slicing of episodes between learners), and :class:`GroupAdvantages` (a learner connector, in
place of GAE) puts them into the train batch. No value function is trained or needed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_pirl.envs.groups import GROUP_KEY, UNSEEDED
from rllib_pirl.envs.workers import RESTARTED

#: info key of the GRPO advantage of the step's episode (written by :class:`GroupBuffer`)
ADVANTAGE = "grpo_advantage"
#: ε of the advantage's denominator
EPSILON = 1e-6
#: sampling rounds after which a group still missing members is given up (its members'
#: episodes were abandoned, e.g. by an env runner's reset after a failed step)
MAX_GROUP_AGE = 100


def group_advantages(returns, epsilon: float = EPSILON) -> np.ndarray:
    """A_j = (R_j − mean_i R_i) / (std_i R_i + ε) over the G returns R of one group
    (population std); every step of episode j gets A_j."""
    returns = np.asarray(returns, dtype=np.float64)
    return (returns - returns.mean()) / (returns.std() + epsilon)


@dataclass
class _Member:
    chunks: list = field(default_factory=list)
    ret: float = 0.0
    success: bool = False
    done: bool = False
    usable: bool = True  # False: unseeded start or ended by a simulator restart


@dataclass
class _Group:
    members: dict = field(default_factory=dict)  # episode id → _Member
    age: int = 0


class GroupBuffer:
    """Episode chunks in, chunks of finished groups (with their advantages) out.

    ``add(chunks)`` after each sampling round; ``pop_ready()`` returns the chunks of the
    groups that now have ``group_size`` finished episodes and pass ``success_filter``
    (``[lo, hi]``: keep a group whose share of successful episodes is in the band; None: all),
    and counts what it completed and dropped in :attr:`stats` (since :meth:`take_stats`);
    groups of a multi-task env (episodes with a ``task`` in their first info) are also counted
    per task: ``completed_per_task/<task>``, ``trained_per_task/<task>`` (0 for a task seen
    before that finished no group since)."""

    def __init__(self, group_size: int, success_filter=None):
        self.group_size, self.success_filter = group_size, success_filter
        self._groups: dict[int, _Group] = defaultdict(_Group)
        self._episode_group: dict[str, int] = {}  # episode id → group key
        self._ready: list = []
        self._tasks: set[str] = set()  # tasks seen: their per-task counts are reported, 0 included
        self.stats: dict[str, float] = defaultdict(float)

    def __len__(self) -> int:
        """Groups waiting for members."""
        return len(self._groups)

    def add(self, chunks) -> None:
        for group in self._groups.values():
            group.age += 1
        for chunk in chunks:
            key = self._key(chunk)
            if key is None:
                self.stats["chunks_without_group"] += 1
                continue
            member = self._groups[key].members.setdefault(chunk.id_, _Member())
            member.chunks.append(chunk)
            infos = chunk.get_infos()
            member.ret += float(chunk.get_return())
            member.success = member.success or any(bool(i.get("success", False)) for i in infos)
            if chunk.t_started == 0 and infos and infos[0].get(UNSEEDED, False):
                member.usable = False
            if chunk.is_done:
                member.done = True
                member.usable = member.usable and not infos[-1].get(RESTARTED, False)
                self._episode_group.pop(chunk.id_, None)
        for key in [k for k, g in self._groups.items() if self._complete(g) or g.age > MAX_GROUP_AGE]:
            self._finish(key, self._groups.pop(key))

    def _key(self, chunk) -> int | None:
        if chunk.t_started == 0:
            key = chunk.get_infos(0).get(GROUP_KEY)
            if key is not None and not chunk.is_done:
                self._episode_group[chunk.id_] = int(key)
            return None if key is None else int(key)
        return self._episode_group.get(chunk.id_)

    def _complete(self, group: _Group) -> bool:
        return sum(m.done for m in group.members.values()) >= self.group_size

    def _finish(self, key: int, group: _Group) -> None:
        members = [m for m in group.members.values() if m.done]
        for episode_id in group.members:
            self._episode_group.pop(episode_id, None)
        if len(members) < self.group_size:
            self.stats["groups_abandoned"] += 1
            return
        if not all(m.usable for m in members):
            self.stats["groups_unusable"] += 1
            return
        rate = float(np.mean([m.success for m in members]))
        task = members[0].chunks[0].get_infos(0).get("task")
        self.stats["groups_completed"] += 1
        if task is not None:
            self._tasks.add(task)
            self.stats[f"completed_per_task/{task}"] += 1
        self.stats["group_success_sum"] += rate
        if self.success_filter is not None and not self.success_filter[0] <= rate <= self.success_filter[1]:
            self.stats["groups_filtered"] += 1
            return
        for member, advantage in zip(members, group_advantages([m.ret for m in members])):
            for chunk in member.chunks:
                for info in chunk.get_infos(slice(0, len(chunk))):
                    info[ADVANTAGE] = float(advantage)
                self._ready.append(chunk)
        self.stats["groups_trained"] += 1
        if task is not None:
            self.stats[f"trained_per_task/{task}"] += 1

    def pop_ready(self) -> list:
        ready, self._ready = self._ready, []
        return ready

    def take_stats(self) -> dict[str, float]:
        """The counts since the last call (and start counting anew)."""
        stats, self.stats = self.stats, defaultdict(float)
        for task in self._tasks:
            for key in ("completed_per_task", "trained_per_task"):
                stats[f"{key}/{task}"] += 0
        return stats


class GroupAdvantages(ConnectorV2):
    """Learner connector (GRPO, in place of GAE): each sample's advantage is its episode's
    group advantage, read from the step's info (:data:`ADVANTAGE`), in the batch's order of
    episodes and steps (no value targets: no value loss is computed)."""

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        advantages = np.concatenate(
            [
                np.asarray([info[ADVANTAGE] for info in episode.get_infos(slice(0, len(episode)))], np.float32)
                for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
            ]
        )
        for module_batch in batch.values():
            rows = len(module_batch[Columns.ACTIONS])
            if rows != len(advantages):  # the batch is made from the same episodes, in this order
                raise RuntimeError(f"GRPO: {len(advantages)} advantages for a train batch of {rows} rows.")
            actions = module_batch.get(Columns.ACTIONS)
            device = actions.device if torch.is_tensor(actions) else None
            module_batch[Postprocessing.ADVANTAGES] = torch.as_tensor(advantages, device=device)
        return batch
