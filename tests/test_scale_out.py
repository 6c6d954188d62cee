"""Scale-out on one machine: several learners (DDP over gloo), remote env runners with
trainable-only weight sync and restarts, tasks spread over env runners, resources checked
against the cluster before anything runs."""

import os
import time

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    learner_states,
    point_gpu_examples_at_a_tiny_checkpoint,
    tiny_config,
    tiny_pi_module,
    tiny_pi_rl_config,
)

from rllib_pirl.rl_module import FROZEN_FINGERPRINT

needs_maniskill = pytest.mark.skipif(
    not os.environ.get("VK_ICD_FILENAMES") and not os.path.isdir("/usr/share/vulkan/icd.d"),
    reason="no Vulkan driver: run scripts/setup_maniskill.sh and source .vulkan/env.sh",
)


def runner_states(algo):
    """Each remote env runner's module weights."""
    return algo.env_runner_group.foreach_env_runner(
        lambda runner: {k: v.detach().cpu().clone() for k, v in runner.module.state_dict().items()},
        local_env_runner=False,
    )


@pytest.mark.parametrize("name, settings", [("FlowSDE", {}), ("FlowNoise", {}), ("FlowSDE", {"kl_early_stop": 2e-5})])
def test_two_learners_train_and_hold_identical_weights(ray_session, name, settings):
    """With ``kl_early_stop`` the learners decide on the KL averaged over both (each sees its
    own half of a minibatch): one stopping alone would leave their weights apart."""
    from rllib_pirl import FlowNoiseConfig, FlowSDEConfig

    cls = {"FlowSDE": FlowSDEConfig, "FlowNoise": FlowNoiseConfig}[name]
    config = tiny_config(cls, **settings, **({"lr": 3e-3, "num_epochs": 4} if settings else {}))
    algo = config.learners(num_learners=2, num_cpus_per_learner=0.5).build_algo()
    try:
        before = learner_states(algo)[0]
        for _ in range(3):
            learner = algo.train()["learners"]["default_policy"]
            assert np.isfinite(learner["policy_loss"]) and np.isfinite(learner["vf_loss"])
            if settings:  # stopped within the update, after at least its first step (both learners)
                assert 2 <= learner["actor_steps"] < 16, learner["actor_steps"]
        first, second = learner_states(algo)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)  # DDP averaged every gradient
        trained = [k for k in first if not torch.equal(first[k], before[k])]
        assert any(k.startswith("model.value_head") for k in trained)  # the critic's optimizer too
        assert any(k.startswith("model.velocity") for k in trained)
        noise_trained = any(k.startswith("model.noise_head") for k in trained)
        assert noise_trained == (name == "FlowNoise")  # Flow-SDE's unused noise head is frozen
    finally:
        algo.stop()


@needs_maniskill
def test_remote_env_runner_gets_only_trainable_weights_and_survives_a_restart(ray_session, tmp_path):
    """Tiny π0 (frozen VLM) on ManiSkill rgb with one remote env runner: the sync carries the
    trainable weights only, yet the runner's module equals the learner's; a runner killed
    mid-run is restarted, builds its frozen weights itself and gets the trainable ones."""
    import ray

    from rllib_pirl import FlowSDEConfig

    tokenizer = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")
    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 32, "max_episode_steps": 12}
    config = (
        tiny_pi_rl_config(FlowSDEConfig, "ManiSkill", env_config, "pi0", tokenizer)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1, num_cpus_per_env_runner=0.5)
        .env_runners(create_local_env_runner=False)
        .fault_tolerance(restart_failed_env_runners=True)
    )
    algo = config.build_algo()
    try:
        algo.train()
        state = algo.learner_group.get_state(components="learner/rl_module", inference_only=True)
        synced = state["learner"]["rl_module"]["default_policy"]
        (learner,) = learner_states(algo)
        model = algo.learner_group._learner.module["default_policy"].unwrapped().model
        frozen = {f"model.{k}" for k, p in model.named_parameters() if not p.requires_grad}
        assert any(k.startswith("model.backbone.paligemma") for k in frozen)
        assert FROZEN_FINGERPRINT in synced and not frozen & set(synced)
        trainable_bytes = sum(
            p.numel() * p.element_size() for k, p in model.named_parameters() if f"model.{k}" not in frozen
        )
        sent = sum(np.asarray(v).nbytes for v in synced.values())
        assert sent <= 1.1 * trainable_bytes < 0.5 * sum(v.numel() * v.element_size() for v in learner.values())

        def runner_equals_learner():
            (runner,) = runner_states(algo)
            return runner.keys() == learner.keys() and all(torch.equal(runner[k], learner[k]) for k in learner)

        assert runner_equals_learner()
        # kill the env runner: RLlib restarts it, it builds the frozen part from init_seed and
        # gets the trainable part from the learner
        (actor_id,) = algo.env_runner_group.healthy_worker_ids()
        ray.kill(algo.env_runner_group._worker_manager._actors[actor_id], no_restart=False)  # a crash
        restored, deadline = False, time.time() + 180  # a restart takes longer on a loaded machine
        while time.time() < deadline:
            algo.train()
            restored = restored or algo._counters["total_num_restored_workers"] > 0
            if restored and algo.env_runner_group.num_healthy_remote_workers() == 1:
                break
            time.sleep(1)
        assert restored
        assert algo.env_runner_group.num_healthy_remote_workers() == 1
        algo.train()  # a sync after the restart
        (learner,) = learner_states(algo)
        assert runner_equals_learner()
    finally:
        algo.stop()


def test_set_state_refuses_frozen_weights_that_differ():
    import gymnasium as gym

    from rllib_pirl.rl_module import FlowRLModule

    obs, act = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2, 2), np.float32)
    config = {"exploration": "sde", "init_seed": 1, "model_kwargs": {"hidden_sizes": (8, 8)}}
    sender = FlowRLModule(observation_space=obs, action_space=act, model_config=config)
    same = FlowRLModule(observation_space=obs, action_space=act, model_config=config)
    other = FlowRLModule(observation_space=obs, action_space=act, model_config=dict(config, init_seed=2))
    state = sender.get_state(inference_only=True)
    assert not any(k.startswith("model.noise_head") for k in state)  # Flow-SDE's noise head is frozen
    with torch.no_grad():
        for p in sender.model.velocity_out.parameters():
            p.add_(1.0)
    same.set_state(sender.get_state(inference_only=True))
    assert all(torch.equal(v, sender.state_dict()[k]) for k, v in same.state_dict().items())
    with pytest.raises(ValueError, match="frozen weights of this process's model differ"):
        other.set_state(sender.get_state(inference_only=True))
    other.set_state(sender.get_state())  # a whole state (a checkpoint) replaces the frozen part too
    other.set_state(sender.get_state(inference_only=True))
    assert all(torch.equal(v, sender.state_dict()[k]) for k, v in other.state_dict().items())


def tasks_reported_by_one_iteration(config) -> list[str]:
    """The tasks whose episodes ended in one training iteration (their success_rate_<task>;
    each also reports its episode_return_mean_<task>)."""
    algo = config.build_algo()
    try:
        runners = algo.train()["env_runners"]
    finally:
        algo.stop()
    tasks = sorted(k[len("success_rate_") :] for k in runners if k.startswith("success_rate_"))
    assert tasks == sorted(k[len("episode_return_mean_") :] for k in runners if k.startswith("episode_return_mean_"))
    return tasks


@needs_maniskill
def test_suite_tasks_spread_over_two_env_runners(ray_session):
    """Six ManiSkill tasks, 2 env runners × 3 envs: every task runs (sub-env i of runner r
    runs task (3r + i) mod 6), and each reports its own success rate."""
    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.envs.maniskill import SUITE

    config = (
        tiny_config(FlowSDEConfig, train_batch_size_per_learner=192, minibatch_size=96)
        .environment("ManiSkill", env_config={"tasks": "suite", "max_episode_steps": 10})
        .env_runners(num_env_runners=2, num_envs_per_env_runner=3, num_cpus_per_env_runner=0.5)
    )
    assert tasks_reported_by_one_iteration(config) == sorted(SUITE)


def test_infeasible_resources_are_refused_before_anything_is_written(tmp_path, capsys):
    from rllib_pirl.cli import main

    path = tmp_path / "big.yaml"
    path.write_text(
        "big:\n  env: PointReach\n  run: FlowSDE\n  stop: {training_iteration: 1}\n"
        "  config: {action_chunk: 4, num_env_runners: 5, num_learners: 2, num_gpus_per_learner: 1}\n"
    )
    storage = tmp_path / "results"
    assert main(["train", "file", str(path), "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "would stay PENDING forever" in err
    assert "GPU: 2 asked = 2 learners × 1 (num_gpus_per_learner); the cluster has 0." in err
    assert "5 env runners × 1 (num_cpus_per_env_runner)" in err
    assert not storage.exists()


EXAMPLES = sorted(f for f in os.listdir(os.path.join(REPO, "tuned_examples")) if f.endswith(".yaml"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_fit_the_machines_they_are_written_for(example, tmp_path, monkeypatch):
    """The CPU examples fit this 2-CPU machine; an 8-GPU node with 48 CPUs holds every GPU
    example, one GPU and 4 CPUs the 1-GPU one, and this machine holds none and says why."""
    from rllib_pirl.cluster import resource_problems, trial_bundles
    from rllib_pirl.experiments import build_config, load_experiments, resolve_algorithm

    gpu = "pi0" in example and "cpu" not in example
    if gpu:
        point_gpu_examples_at_a_tiny_checkpoint(tmp_path, monkeypatch)
    path = os.path.join(REPO, "tuned_examples", example)
    if any(spec["env"] == "LIBERO" for spec in load_experiments(path).values()):
        pytest.importorskip("libero", reason="LIBERO is not installed: run scripts/setup_libero.sh")
    here = [{"CPU": 2.0}]
    for name, spec in load_experiments(path).items():
        algo_cls = resolve_algorithm(spec["run"])
        bundles = trial_bundles(algo_cls, build_config(algo_cls, spec["env"], spec["config"], name))
        if not gpu:
            assert resource_problems(bundles, here) == []
            continue
        node = {"CPU": 4.0, "GPU": 1.0} if "1gpu" in example else {"CPU": 48.0, "GPU": 8.0}
        assert resource_problems(bundles, [node]) == []
        assert any(p.startswith("GPU:") and "the cluster has 0" in p for p in resource_problems(bundles, here))


def test_unreachable_address_is_refused_at_once(tmp_path, capsys):
    from rllib_pirl.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text("exp:\n  env: PointReach\n  run: FlowSDE\n  config: {action_chunk: 4}\n")
    start = time.time()
    code = main(["train", "file", str(path), "--address", "127.0.0.1:9", "--storage-path", str(tmp_path / "r")])
    assert code == 2 and time.time() - start < 30
    assert "No Ray cluster answers at '127.0.0.1:9' (--address)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_batch_that_does_not_split_over_learners_is_refused():
    from rllib_pirl import FlowSDEConfig

    config = FlowSDEConfig().environment("PointReach").training(train_batch_size=1000).learners(num_learners=3)
    with pytest.raises(ValueError, match="train_batch_size=1000 does not split over 3 learners"):
        config.validate()


TWO_NODE_YAML = """
two-nodes:
  env: PointReach
  run: FlowSDE
  stop: {training_iteration: 2}
  config:
    action_chunk: 4
    train_batch_size_per_learner: 64
    minibatch_size: 32
    num_epochs: 1
    num_cpus_for_main_process: 1
    num_env_runners: 1
    num_envs_per_env_runner: 2
    custom_resources_per_env_runner: {sim: 1}     # only the worker node has 'sim'
    callbacks_class: cluster_probe.NodeRecordingCallback
    model_config: {model_kwargs: {hidden_sizes: [16, 16], value_hidden_sizes: [16]}}
"""


TWO_NODE_SCRIPT = """
import json, os, subprocess, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    sim_node = cluster.add_node(num_cpus=2, resources={"sim": 1})
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "rllib"), "train", "file", sys.argv[1], "--storage-path", sys.argv[2]],
        env=dict(os.environ, RAY_ADDRESS=cluster.address), check=False, capture_output=True, text=True, timeout=600,
    )
    print(json.dumps({"rc": out.returncode, "sim_node": sim_node.node_id, "tail": out.stdout[-3000:] + out.stderr[-3000:]}))
finally:
    cluster.shutdown()
    # The test-cluster utility leaves this behind: a later plain ray.init() would join the dead cluster.
    if os.path.exists("/tmp/ray/ray_current_cluster"):
        os.remove("/tmp/ray/ray_current_cluster")
"""


def test_train_file_joins_a_two_node_cluster_and_places_env_runners_by_resource(tmp_path):
    """A head node (1 CPU) and a simulator node (2 CPUs, resource 'sim') on this machine
    (``ray.cluster_utils.Cluster``, in its own process): `rllib train file` with RAY_ADDRESS
    runs there, its env runner on the 'sim' node."""
    import json
    import subprocess
    import sys

    log = tmp_path / "nodes"
    log.mkdir()
    path = tmp_path / "two_nodes.yaml"
    path.write_text(TWO_NODE_YAML)
    # The nodes' worker processes inherit these: the callback's module and its folder.
    env = dict(os.environ, RLLIB_PIRL_NODE_LOG=str(log))
    env["PYTHONPATH"] = os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", TWO_NODE_SCRIPT, str(path), str(tmp_path / "results")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["tail"]
    (trial,) = [d for d in (tmp_path / "results" / "two-nodes").iterdir() if d.is_dir()]
    assert (trial / "checkpoint_000000").is_dir()
    assert {f.read_text() for f in log.iterdir()} == {report["sim_node"]}


def test_libero_tasks_spread_over_two_env_runners(ray_session):
    """Four LIBERO tasks, 2 env runners × 2 simulator processes, tiny π0: every task runs and
    reports its success rate (a 10-task suite needs 10 simulators, ~2 GiB each: too many here)."""
    pytest.importorskip("libero", reason="LIBERO is not installed: run scripts/setup_libero.sh")
    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.envs.libero import suite_tasks

    env_config = {"suite": "libero_goal", "tasks": [0, 1, 2, 3], "camera_size": 32, "max_episode_steps": 8}
    tokenizer = os.path.join(REPO, "checkpoints", "tiny_tokenizer_libero.model")
    config = (
        tiny_pi_rl_config(FlowSDEConfig, "LIBERO", env_config, "pi0", tokenizer)
        .training(train_batch_size_per_learner=16)
        .env_runners(num_env_runners=2, num_envs_per_env_runner=2, num_cpus_per_env_runner=0.5)
    )
    assert tasks_reported_by_one_iteration(config) == sorted(suite_tasks("libero_goal")[i].name for i in range(4))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_bfloat16_module_explores_and_syncs(variant):
    """A tiny π0 / π0.5 in mixed precision (frozen VLM stored in bf16, trainable fp32 master
    weights, bf16 compute): chains start from fp32 latents, the trainable-only state is fp32
    and loads into a second module built the same way; the whole state (checkpoints) sends the
    bf16 tensors as torch tensors (numpy has no bf16)."""
    from ray.rllib.core.columns import Columns

    from rllib_pirl.rl_module import LATENTS, LOGP

    tokenizer = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")
    (sender, obs_space), (receiver, _) = (
        tiny_pi_module(
            variant, tokenizer, model_kwargs={"dtype": "bfloat16"}, instructions=["pick up the cube"], init_seed=3
        )
        for _ in range(2)
    )
    assert {p.dtype for p in sender.model.backbone.paligemma.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in sender.parameters() if p.requires_grad} == {torch.float32}
    out = sender.forward_exploration(
        {Columns.OBS: {k: torch.as_tensor(np.stack([s.sample()] * 2)) for k, s in obs_space.items()}}
    )
    assert out[LATENTS].dtype == torch.float32 and out[LOGP].dtype == torch.float32
    with torch.no_grad():
        for p in sender.parameters():
            if p.requires_grad:
                p.add_(0.125)
    state = sender.get_state(inference_only=True)
    assert all(v.dtype == np.float32 for v in state.values())
    assert any(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in sender.get_state().values())
    receiver.set_state(state)
    assert all(torch.equal(v, sender.state_dict()[k]) for k, v in receiver.state_dict().items())


def test_no_resource_check_skips_the_check(ray_session, tmp_path, monkeypatch):
    """`--no-resource-check` (clusters with an autoscaler): the resource check is never
    called, the run goes on."""
    import rllib_pirl.cluster
    from rllib_pirl.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("check_resources was called")

    monkeypatch.setattr(rllib_pirl.cluster, "check_resources", refuse)
    path = tmp_path / "exp.yaml"
    path.write_text(
        "exp:\n  env: PointReach\n  run: FlowSDE\n  stop: {training_iteration: 1}\n"
        "  config: {num_env_runners: 0, action_chunk: 4, train_batch_size_per_learner: 64, minibatch_size: 32,"
        " num_epochs: 1}\n"
    )
    argv = ["train", "file", str(path), "--storage-path", str(tmp_path / "r"), "--no-resource-check"]
    assert main(argv) == 0
    assert any((tmp_path / "r" / "exp").iterdir())
