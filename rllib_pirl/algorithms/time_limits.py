"""GAE at an episode's time limit (``time_limit_bootstrap: false``): the return ends there.

Which rule a run uses (:func:`time_limit_rule`): the yaml's ``time_limit_bootstrap`` when set,
else the env's (``EnvEntry.time_limit_is_task``): ManiSkill, LIBERO and PointReach episodes must
succeed within their step limit, so their truncation does not bootstrap; a gymnasium id keeps
RLlib's convention (the limit interrupts a task that would go on).

RLlib's learner pipeline (``AddOneTsToEpisodesAndTruncate``) marks the last real step of every
episode chunk that did not terminate as truncated, whether the env's time limit ended the
episode or sampling cut it mid-way, and GAE bootstraps both from V(s_T):
A_T = r_T + γ·V(s_T+1) − V(s_T). That treats the time limit as an interruption. Where the limit
is part of the task (PickCube must succeed within its 100 steps) and the state does not say how
much time is left, the bootstrap credits an episode that runs out of time in a promising state
(holding the cube) with the value of finishing it. With these two pieces the last step of a
chunk that the env truncated is marked terminated instead: A_T = r_T − V(s_T), its value target
r_T. Chunks cut by sampling still bootstrap (their episode goes on).
"""

from __future__ import annotations

import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns

from rllib_pirl.envs import ENVS

#: shared_data key: :func:`env_truncations` of the train batch's episode chunks
ENV_TRUNCATED = "_pirl_env_truncated"


def time_limit_rule(config) -> tuple[bool, str]:
    """``(bootstrap, why)``: whether GAE bootstraps γ·V(s_T) where the env's time limit truncates
    an episode, for an algorithm config (its ``time_limit_bootstrap``, else its env's rule)."""
    if config.time_limit_bootstrap is not None:
        rule = "bootstraps" if config.time_limit_bootstrap else "does not bootstrap (the return ends there)"
        return config.time_limit_bootstrap, f"GAE {rule} at the env's time limit: time_limit_bootstrap is set"
    entry = ENVS.get(config.env) if isinstance(config.env, str) else None
    if entry is not None and entry.time_limit_is_task:
        return False, (
            f"GAE does not bootstrap at the env's time limit (the return ends there): {config.env}'s step limit is "
            "part of its task (time_limit_bootstrap: true to bootstrap)"
        )
    return True, (
        f"GAE bootstraps γ·V(s_T) at the env's time limit: {config.env}'s limit interrupts the task (RLlib's "
        "convention; time_limit_bootstrap: false ends the return there)"
    )


def env_truncations(episodes) -> list[bool]:
    """For each chunk that ``AddOneTsToEpisodesAndTruncate`` will flag truncated — the env
    truncated it (at its time limit; possibly in the step that also terminated it, e.g. a
    success at the last step) or it is unfinished — in the episodes' order: whether the env
    truncated it."""
    return [bool(e.is_truncated) for e in episodes if e.is_truncated or not e.is_terminated]


class RecordTimeLimits(ConnectorV2):
    """Before ``AddOneTsToEpisodesAndTruncate`` (which truncates every unfinished chunk):
    :func:`env_truncations` of the episodes, for :class:`EndAtTimeLimits`."""

    def __call__(self, *, rl_module, batch, episodes, shared_data=None, **kwargs):
        if shared_data is not None:
            shared_data[ENV_TRUNCATED] = env_truncations(episodes)
        return batch


class EndAtTimeLimits(ConnectorV2):
    """Before GAE: the truncated last step of each chunk that the env truncated becomes a
    terminated one. The k-th row flagged truncated is the k-th chunk of
    :func:`env_truncations` (one flag per chunk, rows in the episodes' order)."""

    def __call__(self, *, rl_module, batch, episodes, shared_data=None, **kwargs):
        env_truncated = (shared_data or {}).get(ENV_TRUNCATED)
        if env_truncated is None:
            return batch
        for module_batch in batch.values():
            truncated = module_batch[Columns.TRUNCATEDS]
            rows = torch.nonzero(torch.as_tensor(truncated).reshape(-1)).reshape(-1)
            if len(rows) != len(env_truncated):
                raise RuntimeError(
                    f"time_limit_bootstrap: {len(rows)} truncated rows in the train batch for "
                    f"{len(env_truncated)} episode chunks truncated or unfinished; RLlib's learner pipeline changed."
                )
            ended = rows[torch.as_tensor(env_truncated, dtype=torch.bool)]
            module_batch[Columns.TRUNCATEDS] = _set_rows(truncated, ended, False)
            module_batch[Columns.TERMINATEDS] = _set_rows(module_batch[Columns.TERMINATEDS], ended, True)
        return batch


def _set_rows(column, rows: torch.Tensor, value: bool):
    column = torch.as_tensor(column).clone()
    column.view(-1)[rows] = value
    return column
