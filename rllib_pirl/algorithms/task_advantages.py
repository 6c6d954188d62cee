"""Advantages standardised per task (``advantage_normalization: task``), for multi-task RL.

PPO standardises GAE's advantages over the whole train batch, A ← (A − μ) / σ. In a batch that
mixes tasks that is one scale for all of them: a task whose returns vary most (success near 0.5)
sets σ and takes most of the update, while a task the critic values badly gets advantages of one
sign for all its actions. Standardising within each task's rows gives every task of the batch
zero-mean, unit-scale advantages: each task's update pushes towards its better-than-usual
actions with the same weight, whatever its success rate. The task of a row is its observation's
``task_id`` (ManiSkill's suite, LIBERO). The flip side: a task whose episodes all succeed or all
fail has advantages that are almost only the critic's error, which this lifts to full weight — on
the ManiSkill suite it made RL worse than the batch-wide standardisation (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

#: the floor of σ_k (RLlib's for the batch-wide standardisation)
STD_FLOOR = 1e-4


def standardize_per_task(
    advantages: torch.Tensor, task_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A_i ← (A_i − μ_k) / max(σ_k, 1e-4) with k = task_ids[i], where μ_k and σ_k are the mean
    and (population) standard deviation of the advantages of task k's rows inside ``mask``
    (all rows without one). Rows outside ``mask`` (RLlib's bootstrap steps) get 0."""
    task_ids = task_ids.reshape(-1).to(advantages.device)
    inside = torch.ones_like(task_ids, dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
    out = torch.zeros_like(advantages)
    for task in torch.unique(task_ids[inside]):
        rows = inside & (task_ids == task)
        values = advantages[rows]
        out[rows] = (values - values.mean()) / values.std(unbiased=False).clamp_min(STD_FLOOR)
    return out


class TaskAdvantages(ConnectorV2):
    """Learner connector after GAE: the batch-standardised advantages standardised again per
    task (:func:`standardize_per_task`; an affine change of the whole batch does not change
    the result, so this equals standardising GAE's raw advantages per task)."""

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        for module_id, module_batch in batch.items():
            if Postprocessing.ADVANTAGES not in module_batch:
                continue
            obs = module_batch[Columns.OBS]
            if not isinstance(obs, dict) or "task_id" not in obs:
                raise ValueError(
                    "advantage_normalization: task standardises the advantages of each task_id, but the "
                    f"observations of module {module_id!r} carry no task_id (a Dict observation with a "
                    "'task_id' entry, as ManiSkill's and LIBERO's envs give): use advantage_normalization: batch."
                )
            module_batch[Postprocessing.ADVANTAGES] = standardize_per_task(
                module_batch[Postprocessing.ADVANTAGES],
                torch.as_tensor(obs["task_id"]),
                module_batch.get(Columns.LOSS_MASK),
            )
        return batch
