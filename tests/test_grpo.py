"""GRPO: groups of episodes from one initial state (PointReach through the algorithm's env
runner, ManiSkill and LIBERO vector envs of worker processes), the group advantage, the
success filter, the bad input, and GRPO learning PointReach."""

import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from conftest import REPO
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from rllib_pirl.algorithms import FlowNoiseConfig, FlowSDEConfig
from rllib_pirl.algorithms.grpo import ADVANTAGE, EPSILON, GroupBuffer, group_advantages
from rllib_pirl.envs import make_point_reach
from rllib_pirl.envs.groups import GROUP_KEY, UNSEEDED, GroupedResets, group_key, group_seed
from rllib_pirl.envs.workers import RESTARTED
from rllib_pirl.evaluation import evaluate
from rllib_pirl.experiments import build_config, load_experiments, resolve_algorithm


def test_group_advantages_are_the_formula_and_zero_mean():
    returns = [1.0, 0.0, 0.0, 2.0, 1.0, 0.5, 0.0, 1.5]
    mean = sum(returns) / 8
    std = (sum((r - mean) ** 2 for r in returns) / 8) ** 0.5
    advantages = group_advantages(returns)
    assert np.allclose(advantages, [(r - mean) / (std + EPSILON) for r in returns])
    assert abs(advantages.mean()) < 1e-12
    assert np.all(group_advantages([0.7] * 4) == 0)  # a group that all did the same teaches nothing


def episode(key, rewards, success=False, unseeded=False, restarted=False, task=None):
    """A finished episode of ``len(rewards)`` steps whose reset info names group ``key`` (and
    ``task``, as a multi-task env's does)."""
    n = len(rewards)
    first = {GROUP_KEY: key, **({UNSEEDED: True} if unseeded else {}), **({"task": task} if task else {})}
    infos = [first] + [{} for _ in range(n)]
    infos[-1] = {"success": success, **({RESTARTED: True} if restarted else {})}
    return SingleAgentEpisode(
        observations=[np.zeros(2, np.float32)] * (n + 1),
        actions=[np.zeros(2, np.float32)] * n,
        rewards=list(rewards),
        infos=infos,
        terminated=True,
        len_lookback_buffer=0,
    )


def test_success_filter_drops_exactly_the_groups_outside_the_band():
    G = 8
    buffer = GroupBuffer(G, success_filter=[0.1, 0.9])
    rates = {0: 0 / 8, 1: 1 / 8, 2: 4 / 8, 3: 7 / 8, 4: 8 / 8}  # kept: 1/8, 4/8, 7/8
    for g, rate in rates.items():
        successes = round(rate * G)
        buffer.add([episode(group_key(g, 0), [float(j < successes)] * 3, j < successes) for j in range(G)])
    kept = {ep.get_infos(0)[GROUP_KEY] >> 32 for ep in buffer.pop_ready()}
    assert kept == {1, 2, 3}
    assert buffer.stats["groups_filtered"] == 2 and buffer.stats["groups_trained"] == 3


def test_groups_of_a_multi_task_env_are_counted_per_task():
    buffer = GroupBuffer(2, success_filter=[0.1, 0.9])
    for g, (task, successes) in enumerate([("A", [1, 0]), ("A", [1, 1]), ("B", [0, 0]), ("B", [0, 1])]):
        buffer.add([episode(group_key(g, 0), [float(s)], bool(s), task=task) for s in successes])
    stats = buffer.take_stats()
    assert stats["completed_per_task/A"] == stats["completed_per_task/B"] == 2
    assert stats["trained_per_task/A"] == stats["trained_per_task/B"] == 1
    assert stats["groups_trained"] == 2
    buffer.add([episode(group_key(9, 0), [1.0], True, task="A")])  # a group still waiting for a member
    stats = buffer.take_stats()  # the tasks seen before are still reported, with 0
    assert {k: v for k, v in stats.items() if "/" in k} == {
        f"{key}/{task}": 0 for key in ("completed_per_task", "trained_per_task") for task in "AB"
    }


def test_a_group_waits_for_all_members_and_a_restarted_member_spoils_it():
    buffer = GroupBuffer(2)
    buffer.add([episode(group_key(0, 0), [1.0, 1.0])])
    assert buffer.pop_ready() == [] and len(buffer) == 1
    buffer.add([episode(group_key(0, 0), [0.0, 1.0])])
    ready = buffer.pop_ready()
    assert [ep.get_infos(0)[ADVANTAGE] for ep in ready] == pytest.approx(list(group_advantages([2.0, 1.0])))
    buffer.add([episode(group_key(0, 1), [1.0]), episode(group_key(0, 1), [0.0], restarted=True)])
    buffer.add([episode(group_key(0, 2), [1.0], unseeded=True), episode(group_key(0, 2), [0.0])])
    assert buffer.pop_ready() == [] and buffer.stats["groups_unusable"] == 2


def grpo_point_reach(config_cls=FlowSDEConfig, **training):
    settings = {
        "advantage_estimator": "grpo",
        "group_size": 4,
        "action_chunk": 4,
        "train_batch_size_per_learner": 128,
        "minibatch_size": 64,
        "num_epochs": 1,
        "lr": 3e-4,
    }
    return (
        config_cls()
        .environment("PointReach")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8)
        .training(**(settings | training))
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": [16], "value_hidden_sizes": [16]}})
        .debugging(seed=3)
    )


@pytest.mark.parametrize("config_cls", [FlowSDEConfig, FlowNoiseConfig])
def test_a_group_starts_from_one_state_and_carries_its_advantages(ray_session, config_cls):
    algo = grpo_point_reach(config_cls).build_algo()
    try:
        episodes = defaultdict(list)  # episode id → its chunks
        for _ in range(6):
            for chunk in algo.env_runner.sample():
                episodes[chunk.id_].append(chunk)
        groups = defaultdict(list)  # key → (first observation, return, advantage) per episode
        for chunks in episodes.values():
            first = next(c for c in chunks if c.t_started == 0)
            advantages = {info[ADVANTAGE] for c in chunks for info in c.get_infos(slice(0, len(c)))}
            assert len(advantages) == 1 and chunks[-1].is_done  # one advantage per (finished) episode
            groups[first.get_infos(0)[GROUP_KEY]].append(
                (first.get_observations(0), sum(c.get_return() for c in chunks), advantages.pop())
            )
        assert len(groups) >= 4
        base_seed, single = algo.env_runner.env.env.base_seed, make_point_reach({"action_chunk": 4})
        firsts = []
        for key, members in groups.items():
            assert len(members) == 4  # exactly G episodes
            expected, _ = single.reset(seed=group_seed(base_seed, key >> 32, key & 0xFFFFFFFF))
            assert all(np.array_equal(m[0], expected) for m in members)  # the group's seeded state
            returns, advantages = [m[1] for m in members], [m[2] for m in members]
            assert advantages == pytest.approx(list(group_advantages(returns)), abs=1e-6)
            assert abs(np.mean(advantages)) < 1e-6
            firsts.append(members[0][0])
        assert len({tuple(f) for f in firsts}) == len(firsts)  # and every group its own state
        result = algo.train()  # and the learner trains on them, without a critic
        learner = result["learners"]["default_policy"]
        assert learner["num_module_steps_trained"] > 0 and "vf_loss" not in learner
        assert result["env_runners"]["grpo"]["groups_trained"] > 0
    finally:
        algo.stop()


def starts_per_group(venv, steps, group_size=2, seed=7):
    """Run random chunks through ``GroupedResets(venv)``; the first observations of every
    episode, per group key, and each sub-env's task ids."""
    env = GroupedResets(venv, group_size)
    starts, tasks = defaultdict(list), defaultdict(set)
    obs, infos = env.reset(seed=seed)
    started = np.ones(env.num_envs, bool)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        for i in np.flatnonzero(started):
            assert infos[f"_{GROUP_KEY}"][i]
            starts[int(infos[GROUP_KEY][i])].append({k: v[i].copy() for k, v in obs.items()})
            tasks[i].add(int(obs["task_id"][i][0]))
        actions = rng.uniform(-1, 1, (env.num_envs, *env.single_action_space.shape)).astype(np.float32)
        obs, *_, infos = env.step(actions)
        started = np.asarray(infos.get(f"_{GROUP_KEY}", np.zeros(env.num_envs, bool)), bool)
    env.close()
    return starts, tasks


def assert_groups_start_from_their_seeds(starts, task_makers, group_size=2, base_seed=7, key="state"):
    """Every episode of group (g, k) starts where a single env of pool g's task starts when
    reset with the group's seed; each group from its own state."""
    complete = [(k, members) for k, members in starts.items() if len(members) >= 2]
    assert len(complete) >= 4
    for k, members in complete:
        pool, episode = k >> 32, k & 0xFFFFFFFF
        single = task_makers[pool % len(task_makers)]()
        try:
            expected, _ = single.reset(seed=group_seed(base_seed, pool, episode))
        finally:
            single.close()
        assert all(np.array_equal(m[key], expected[key]) for m in members)
    firsts = [m[0][key].tobytes() for _, m in complete]
    assert len(set(firsts)) == len(firsts)


def test_maniskill_worker_envs_reset_in_groups_with_one_task_per_group():
    from rllib_pirl.envs.maniskill import make_maniskill_env, make_maniskill_task_makers

    env_config = {"tasks": ["PickCube-v1", "PushCube-v1"], "action_chunk": 2, "max_episode_steps": 6}
    venv = make_maniskill_env(dict(env_config, num_envs=4, group_size=2))
    starts, tasks = starts_per_group(venv, steps=12)
    assert_groups_start_from_their_seeds(starts, make_maniskill_task_makers(env_config))
    assert [tasks[i] for i in range(4)] == [{0}, {0}, {1}, {1}]  # a group's sub-envs share a task


def test_libero_worker_envs_reset_in_groups():
    pytest.importorskip("libero", reason="LIBERO is not installed: run scripts/setup_libero.sh")
    from rllib_pirl.envs.libero import LiberoConfig, make_libero_env, make_task_env

    env_config = {
        "suite": "libero_goal",
        "tasks": ["open_the_middle_drawer_of_the_cabinet"],
        "camera_size": 32,
        "action_chunk": 2,
        "max_episode_steps": 4,
    }
    venv = make_libero_env(dict(env_config, num_envs=2, group_size=2))
    starts, _ = starts_per_group(venv, steps=10)
    # (the training env's random initial states, chosen by the reset seed)
    makers = [lambda: make_task_env(LiberoConfig.from_env_config(env_config), 0)]
    assert_groups_start_from_their_seeds(starts, makers)
    assert_groups_start_from_their_seeds(starts, makers, key="image")


def test_a_round_whose_groups_are_all_filtered_is_counted_and_trains_nothing(ray_session):
    """A sampling round may finish no group that the success filter keeps (a policy that fails,
    or solves, every episode of its groups): the iteration trains nothing, and its env steps,
    episodes and group counts are still in the results — the lifetime counters that the
    schedules and stop criteria read (RLlib's PPO step returned before recording them)."""
    # G = 4: a group's success rate is 0, 1/4, 1/2, 3/4 or 1, never in [0.3, 0.4]
    algo = grpo_point_reach(grpo_success_filter=[0.3, 0.4]).build_algo()
    try:
        before = {k: v.clone() for k, v in algo.get_module().state_dict().items()}
        lifetime, filtered = [], 0
        for _ in range(2):
            runners = algo.train()["env_runners"]
            lifetime.append(runners[NUM_ENV_STEPS_SAMPLED_LIFETIME])
            assert runners["grpo"]["groups_trained"] == 0
            filtered += runners["grpo"]["groups_filtered"]
        assert lifetime[0] >= 128 and lifetime[1] >= lifetime[0] + 128 and filtered > 0
        after = algo.get_module().state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"group_size": 1}, "group_size must be an integer >= 2"),
        ({"grpo_success_filter": [0.2, 1.2]}, "grpo_success_filter must be null or \\[lo, hi\\]"),
        ({"grpo_success_filter": [0.9, 0.1]}, "grpo_success_filter"),
        ({"advantage_estimator": "vtrace"}, "advantage_estimator must be one of"),
        (
            {"train_batch_size_per_learner": 48, "minibatch_size": 48},
            "cannot hold one whole GRPO group: 4 episodes of up to 13",
        ),
        ({"group_size": 3}, "num_envs_per_env_runner=8 is not a multiple of group_size=3"),
    ],
)
def test_bad_grpo_settings_are_rejected_before_ray_starts(setting, message):
    with pytest.raises(ValueError, match=message):
        grpo_point_reach(**setting).validate()


@pytest.mark.parametrize(
    "envs, enough, training, message",
    [
        (8, 24, {"advantage_estimator": "grpo", "group_size": 4}, "2 GRPO pools of 4 sub-envs .* StackCube-v1, "),
        (4, 6, {}, "4 sub-envs .* PlaceSphere-v1, LiftPegUpright-v1 would never be sampled"),
    ],
)
def test_a_multi_task_env_with_fewer_slots_than_tasks_is_rejected(envs, enough, training, message):
    """Sub-env slot (GRPO: pool) i runs task i mod #tasks: the six-task suite on fewer would
    silently never train some tasks."""
    config = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config={"tasks": "suite", "max_episode_steps": 150})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=envs)
        .training(action_chunk=5, **training)
    )
    with pytest.raises(ValueError, match=message):
        config.validate()
    config.env_runners(num_envs_per_env_runner=enough).validate()


def test_a_task_listed_twice_in_train_tasks_gets_two_slots():
    """`train_tasks` may repeat a task to give it a larger share of the sub-envs (GRPO: pools);
    each entry needs its own slot."""
    from rllib_pirl.envs.maniskill import SUITE, ManiSkillConfig

    env_config = {"tasks": "suite", "train_tasks": [*SUITE, "PlaceSphere-v1"], "max_episode_steps": 150}
    place = SUITE.index("PlaceSphere-v1")
    config = ManiSkillConfig.from_env_config(env_config)
    assert [config.task_index_of_sub_env(i) for i in range(7)] == [*range(6), place]
    grpo = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=24)
        .training(action_chunk=5, advantage_estimator="grpo", group_size=4)
    )
    with pytest.raises(ValueError, match="7 tasks to train but the env runners hold 6 GRPO pools"):
        grpo.validate()
    grpo.env_runners(num_envs_per_env_runner=28).validate()


def test_grpo_refuses_envs_whose_resets_it_cannot_seed():
    config = grpo_point_reach().environment("ManiSkill", env_config={"backend": "gpu"})
    with pytest.raises(ValueError, match="Set env_config.backend: cpu"):
        config.validate()
    config = grpo_point_reach().env_runners(gym_env_vectorize_mode="async")
    with pytest.raises(ValueError, match="gym_env_vectorize_mode: sync"):
        config.validate()


def test_grpo_learns_point_reach(ray_session):
    """The tuned example: deterministic success from the random policy's to >= 0.8 (200 seeds)."""
    path = os.path.join(REPO, "tuned_examples", "flow_sde_point_reach_grpo.yaml")
    ((name, spec),) = load_experiments(path).items()
    algo = build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name).build_algo()
    env = make_point_reach(dict(algo.config.env_config))
    try:
        before = evaluate(algo.get_module(), env, 200, seed=1000)
        for _ in range(spec["stop"]["training_iteration"]):
            algo.train()
        after = evaluate(algo.get_module(), env, 200, seed=1000)
    finally:
        algo.stop()
    print(f"GRPO PointReach: before\n{before.summary()}\nafter\n{after.summary()}")
    assert before.success_rate <= 0.1
    assert after.success_rate >= 0.8 and after.success_ci95[0] > before.success_ci95[1]


def test_grpo_trains_on_maniskill_groups_through_the_algorithm(ray_session):
    """The ManiSkill creator, its episode limit, the pools in worker processes (one task each)
    and the env runner's groups, end to end: complete groups are trained on and counted per task."""
    tasks = ["PickCube-v1", "PushCube-v1"]
    config = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config={"tasks": tasks, "max_episode_steps": 10, "backend": "auto"})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
        .training(
            action_chunk=5,
            advantage_estimator="grpo",
            group_size=2,
            train_batch_size_per_learner=16,
            minibatch_size=16,
            num_epochs=1,
        )
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": [16], "value_hidden_sizes": [16]}})
        .debugging(seed=5)
    )
    algo = config.build_algo()
    try:
        trained, per_task = 0, defaultdict(int)
        for _ in range(3):
            result = algo.train()
            groups = result["env_runners"]["grpo"]
            trained += groups["groups_trained"]
            for task, n in groups.get("trained_per_task", {}).items():
                per_task[task] += n
        assert trained >= 3
        assert set(per_task) == set(tasks) and sum(per_task.values()) == trained
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
    finally:
        algo.stop()
