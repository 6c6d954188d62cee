"""``time_limit_bootstrap: false``: GAE's return ends at the env's time limit (the last step of a
chunk the env truncated counts as terminated, its value target is its reward), while chunks that
sampling cut mid-episode still bootstrap from V(s_T). Unset, the env's rule decides: PointReach's,
ManiSkill's and LIBERO's step limits are part of their tasks."""

import dataclasses

import numpy as np
import pytest
from conftest import learner_train_batch, tiny_config
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_pirl.algorithms import FlowSDEConfig
from rllib_pirl.algorithms.time_limits import time_limit_rule
from rllib_pirl.envs import ENVS, EnvEntry


def learner_batch(algo):
    chunks, batch = learner_train_batch(algo, 128)
    return chunks, {key: np.asarray(value).reshape(-1) for key, value in batch.items() if not isinstance(value, dict)}


@pytest.mark.parametrize("setting", [True, False, None])
def test_the_return_ends_at_the_time_limit_only_when_asked(ray_session, capsys, setting):
    """True / False as set; unset (None), PointReach's rule: its limit is part of the task."""
    algo = tiny_config(FlowSDEConfig, time_limit_bootstrap=setting).build_algo()
    bootstrap = setting is True
    printed = capsys.readouterr().out
    assert ("[pirl] GAE bootstraps" if bootstrap else "[pirl] GAE does not bootstrap") in printed
    assert ("PointReach's step limit is part of its task" in printed) == (setting is None)
    try:
        ends, batch = learner_batch(algo)
        kinds = {"env_truncated": [], "cut": [], "terminated": []}
        row = 0
        for length, terminated, truncated in ends:  # each chunk: its real rows, then RLlib's extra row
            last = row + length - 1
            kind = "terminated" if terminated else "env_truncated" if truncated else "cut"
            kinds[kind].append(last)
            row += length + 1
        assert row == len(batch[Columns.REWARDS])
        assert kinds["env_truncated"] and kinds["cut"]  # PointReach's 50-step limit and the batch's cut
        time_limit, cut = np.array(kinds["env_truncated"]), np.array(kinds["cut"])
        targets, rewards = batch[Postprocessing.VALUE_TARGETS], batch[Columns.REWARDS]
        # a cut chunk bootstraps from V(s_T) in both modes
        assert batch[Columns.TRUNCATEDS][cut].all() and not batch[Columns.TERMINATEDS][cut].any()
        assert not np.allclose(targets[cut], rewards[cut], atol=1e-4)
        if bootstrap:  # RLlib's convention: the time limit is an interruption
            assert batch[Columns.TRUNCATEDS][time_limit].all() and not batch[Columns.TERMINATEDS][time_limit].any()
            assert not np.allclose(targets[time_limit], rewards[time_limit], atol=1e-4)
        else:  # the return stops at the limit: the value target of the last step is its reward
            assert batch[Columns.TERMINATEDS][time_limit].all() and not batch[Columns.TRUNCATEDS][time_limit].any()
            assert targets[time_limit] == pytest.approx(rewards[time_limit], abs=1e-5)
        assert batch[Columns.TERMINATEDS].sum() == len(kinds["terminated"]) + (0 if bootstrap else len(time_limit))
        assert algo.train()["learners"]["default_policy"]["num_module_steps_trained"] > 0
    finally:
        algo.stop()


def test_time_limit_bootstrap_must_be_a_bool():
    with pytest.raises(ValueError, match="time_limit_bootstrap must be true, false or null"):
        tiny_config(FlowSDEConfig, time_limit_bootstrap="no").validate()


def test_every_env_declares_its_time_limit_rule():
    """An env entry cannot leave the rule out; the simulators' tasks end at their limits, a
    gymnasium id keeps RLlib's convention; the yaml's setting wins over the env's rule."""
    field = next(f for f in dataclasses.fields(EnvEntry) if f.name == "time_limit_is_task")
    assert field.kw_only and field.default is dataclasses.MISSING
    with pytest.raises(TypeError, match="time_limit_is_task"):
        EnvEntry(lambda c: None)
    rules = {name: entry.time_limit_is_task for name, entry in ENVS.items()}
    assert rules == {"ChunkedGym": False, "PointReach": True, "ManiSkill": True, "LIBERO": True}
    for name, is_task in rules.items():
        config = FlowSDEConfig().environment(name)
        assert time_limit_rule(config)[0] is (not is_task)
        for setting in (True, False):
            assert time_limit_rule(config.training(time_limit_bootstrap=setting))[0] is setting


def test_a_chunk_the_env_both_terminated_and_truncated_is_counted():
    """A success at the time limit's step ends the episode terminated and truncated: RLlib then
    flags its last step truncated too, so it has a row among the truncated ones."""
    from types import SimpleNamespace as Chunk

    from rllib_pirl.algorithms.time_limits import env_truncations

    chunks = [
        Chunk(is_terminated=True, is_truncated=False),  # success before the limit: no truncated row
        Chunk(is_terminated=True, is_truncated=True),  # success at the limit
        Chunk(is_terminated=False, is_truncated=True),  # the time limit
        Chunk(is_terminated=False, is_truncated=False),  # cut by sampling
    ]
    assert env_truncations(chunks) == [True, True, False]
