"""`rllib train file --resume`: an experiment killed with SIGKILL continues from its last checkpoint;
a learner restored from a checkpoint trains at its own config's learning rate."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_config, tiny_yaml_config
from test_cli import rllib, write

from rllib_pirl.cli import main

RESUMABLE = """
resume-me:
  env: PointReach
  run: FlowSDE
  stop: {training_iteration: 24}
  checkpoint_config: {checkpoint_frequency: 4, num_to_keep: 2}
  config:""" + tiny_yaml_config(256)


def iterations_by_process(storage, key="training_iteration"):
    """``key`` of each result in the trial's result.json, per trainable process (pid)."""
    (result,) = glob.glob(os.path.join(storage, "resume-me", "*", "result.json"))
    by_pid = {}
    with open(result) as f:
        for line in f:
            row = json.loads(line)
            by_pid.setdefault(row["pid"], []).append(row[key])
    return list(by_pid.values())


def recorded(storage):
    """Whether Tune's experiment state was saved after the trial's 2nd checkpoint was written
    (kept checkpoints: the last 2; any with index >= 1 is the 2nd or later)."""
    written = glob.glob(os.path.join(storage, "resume-me", "*", "checkpoint_0*", "rllib_checkpoint.json"))
    written = [w for w in written if not w.endswith("checkpoint_000000/rllib_checkpoint.json")]
    states = glob.glob(os.path.join(storage, "resume-me", "experiment_state-*.json"))
    return bool(written and states) and max(map(os.path.getmtime, states)) > min(map(os.path.getmtime, written)) + 0.5


def test_a_run_killed_after_two_checkpoints_resumes_to_its_stop_with_iterations_counting_on(tmp_path):
    path, storage = write(tmp_path, RESUMABLE), str(tmp_path / "runs")
    exe = os.path.join(os.path.dirname(sys.executable), "rllib")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [exe, "train", "file", path, "--storage-path", storage],
            start_new_session=True,
            stdout=log,
            stderr=log,
            env=dict(os.environ, TUNE_GLOBAL_CHECKPOINT_S="1"),  # experiment state saved every second
        )
    try:  # kill after 2 checkpoints that Tune recorded in its experiment state
        deadline = time.time() + 300
        while not recorded(storage):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group: rllib, Tune, Ray's processes
        first.wait()
    # the next checkpoint, half written when the kill came: never recorded, so never read,
    # and overwritten when the resumed trial gets there
    (trial,) = glob.glob(os.path.join(storage, "resume-me", "*/"))
    last = max(int(c.rsplit("_", 1)[1]) for c in glob.glob(os.path.join(trial, "checkpoint_*")))
    partial = os.path.join(trial, f"checkpoint_{last + 1:06d}")
    os.makedirs(partial)
    with open(os.path.join(partial, "algorithm_state.pkl"), "wb") as f:
        f.write(b"\x80\x04trunc")

    out = rllib("train", "file", path, "--storage-path", storage, "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    resumed = iterations_by_process(storage)[-1]
    # continued from a checkpoint (every 4 iterations; the 2nd or a later one), not from 1, to the stop
    assert resumed[0] >= 9 and (resumed[0] - 1) % 4 == 0 and resumed == list(range(resumed[0], 25)), resumed
    # the env-step count (what the lr and noise schedules read) continued too: >= 256 per iteration
    steps = iterations_by_process(storage, "num_env_steps_sampled_lifetime")[-1]
    assert steps[0] >= 256 * resumed[0], steps
    # the half-written folder was written over by a whole checkpoint (or that one was rotated out: num_to_keep)
    assert not os.path.exists(partial) or os.path.getsize(os.path.join(partial, "algorithm_state.pkl")) > 100


def test_resume_without_an_experiment_says_where_it_looked_and_writes_nothing(tmp_path, capsys):
    storage = tmp_path / "nothing-here"
    assert main(["train", "file", write(tmp_path, RESUMABLE), "--storage-path", str(storage), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"no Tune experiment state in {storage / 'resume-me'}" in err and "--storage-path" in err
    assert not storage.exists()
    assert main(["train", "file", write(tmp_path, RESUMABLE), "--resume", "--stop", '{"training_iteration": 3}']) == 2
    assert "drop --stop" in capsys.readouterr().err


def test_a_crashed_trial_restarts_from_its_last_checkpoint_with_failure_config(tmp_path):
    import psutil

    text = RESUMABLE.replace("  checkpoint_config:", "  failure_config: {max_failures: 1}\n  checkpoint_config:")
    path, storage = write(tmp_path, text), str(tmp_path / "runs")
    exe = os.path.join(os.path.dirname(sys.executable), "rllib")
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(
            [exe, "train", "file", path, "--storage-path", storage], start_new_session=True, stdout=log, stderr=log
        )
    try:
        deadline = time.time() + 300
        while not glob.glob(os.path.join(storage, "resume-me", "*", "checkpoint_000001", "rllib_checkpoint.json")):
            assert run.poll() is None and time.time() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.05)
        # the trial's process (Ray's actor "ray::FlowSDE", a descendant of this run) dies
        (trial,) = [p for p in psutil.Process(run.pid).children(recursive=True) if "ray::FlowSDE" in p.name()]
        trial.kill()
        assert run.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    _, restarted = iterations_by_process(storage)  # the first process, the restarted one
    assert restarted[0] >= 5 and (restarted[0] - 1) % 4 == 0 and restarted == list(range(restarted[0], 25))


def test_a_restored_learner_trains_at_its_own_configs_fixed_lr_not_the_saved_one(ray_session, tmp_path):
    """PBT's exploit: a trial with a mutated lr restores another trial's checkpoint. The saved
    optimizer state holds the donor's lr; the restored learner must use its own config's from
    its first update on (RLlib alone would set it only after that update)."""
    from rllib_pirl.algorithms import FlowSDEConfig

    def optimizer_lrs(algo):
        learner = algo.learner_group._learner
        return sorted(learner._get_optimizer_lr(o) for o in learner._named_optimizers.values())

    donor = tiny_config(FlowSDEConfig, lr=3e-4, value_lr=1e-3).build_algo()
    donor.train()
    path = donor.save_to_path(str(tmp_path / "donor"))
    donor.stop()
    mutated = tiny_config(FlowSDEConfig, lr=7e-5, value_lr=2e-3).build_algo()
    try:
        mutated.restore_from_path(path)
        assert optimizer_lrs(mutated) == pytest.approx([7e-5, 2e-3])
    finally:
        mutated.stop()
