"""The `rllib` console script."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, point_gpu_examples_at_a_tiny_checkpoint

from rllib_pirl.cli import main

EXAMPLE = os.path.join(REPO, "tuned_examples", "flow_sde_point_reach.yaml")


def rllib(*args, cwd=None, timeout=600):
    exe = os.path.join(os.path.dirname(sys.executable), "rllib")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "rllib_pirl.cli"]
    return subprocess.run(cmd + list(args), check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_help_explains_both_commands():
    out = rllib("--help")
    assert out.returncode == 0
    assert "train file" in out.stdout and "evaluate" in out.stdout


@pytest.mark.parametrize("example", sorted(os.listdir(os.path.join(REPO, "tuned_examples"))))
def test_tuned_examples_are_valid(example, tmp_path, monkeypatch):
    from rllib_pirl.errors import UsageError
    from rllib_pirl.experiments import build_config, load_experiments, resolve_algorithm

    path = os.path.join(REPO, "tuned_examples", example)
    with open(path) as f:
        needs_checkpoint = "$PI0" in f.read()
    experiments = load_experiments(path)
    if any(spec["env"] == "LIBERO" for spec in experiments.values()):
        pytest.importorskip("libero", reason="LIBERO is not installed: run scripts/setup_libero.sh")
    if needs_checkpoint:  # GPU examples name real π0 / π0.5 checkpoints by environment variable
        for name, spec in experiments.items():
            with pytest.raises(UsageError, match="model_kwargs.pretrained: '\\$PI0"):
                build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name)
        point_gpu_examples_at_a_tiny_checkpoint(tmp_path, monkeypatch)
    for name, spec in experiments.items():
        build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name, spec.get("tune_config"))


def test_train_file_runs_a_tuned_example_and_evaluate_reads_its_checkpoint(tmp_path):
    out = rllib("train", "file", EXAMPLE, "--stop", '{"training_iteration": 1}', "--storage-path", str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = [d for d in (tmp_path / "flow-sde-point-reach").iterdir() if d.is_dir()]
    assert len(trials) == 1
    trial = trials[0]
    assert any(f.name.startswith("events.out.tfevents") for f in trial.iterdir())  # TensorBoard
    ckpt = trial / "checkpoint_000000"
    assert (ckpt / "learner_group").is_dir()
    ev = rllib("evaluate", str(ckpt), "--episodes", "4", "--seed", "10")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert re.search(r"mean return: -?\d", ev.stdout) and re.search(r"success rate: \d", ev.stdout)
    assert "seeds 10..13" in ev.stdout and "deterministic policy from x0 zeros, K = " in ev.stdout
    noise = rllib("evaluate", str(ckpt), "--episodes", "4", "--seed", "10", "--x0", "noise")
    assert noise.returncode == 0 and "deterministic policy from x0 noise" in noise.stdout, noise.stderr[-3000:]
    # export: the trained model as a model checkpoint, which evaluates the same way
    ex = rllib("export", str(ckpt), "--out", str(tmp_path / "model"))
    assert ex.returncode == 0, ex.stderr[-3000:]
    ev2 = rllib(
        "evaluate",
        str(tmp_path / "model"),
        "--env",
        "PointReach",
        "--env-config",
        '{"action_chunk": 4}',
        "--episodes",
        "4",
        "--seed",
        "10",
    )
    assert ev2.returncode == 0, ev2.stderr[-3000:]
    assert ev2.stdout.split("mean return:")[1].split()[0] == ev.stdout.split("mean return:")[1].split()[0]


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
exp:
  env: PointReach
  run: FlowSDE
  stop: {training_iteration: 1}
  config: {num_env_runners: 0, action_chunk: 4, %s}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        ("exp: [unclosed", "Malformed yaml"),
        (
            GOOD.replace("run: FlowSDE", "run: FlowSDF") % "",
            "unknown algorithm 'FlowSDF'.*FlowSDE, FlowNoise.*Did you mean 'FlowSDE'",
        ),
        (
            GOOD.replace("env: PointReach", "env: PointRech") % "",
            "unknown env 'PointRech'.*ChunkedGym, PointReach.*Did you mean 'PointReach'",
        ),
        (GOOD % "noise_levle: 0.3", "no key 'noise_levle'.*Did you mean 'noise_level'"),
        (GOOD % "noise_level: -0.5", "noise_level must be a number >= 0"),
        (GOOD % "noise_std_range: [0.3, 0.1]", "0 < min <= max, got min=0.3, max=0.1"),
        (GOOD % "num_denoise_steps: 0", "num_denoise_steps .K. must be an integer >= 1"),
        (GOOD.replace("stop:", "stopp:") % "", "unknown key 'stopp'"),
        (
            GOOD.replace("stop:", "failure_config: {max_failure: 1}\n  stop:") % "",
            "unknown failure_config key 'max_failure'; valid: max_failures, fail_fast",
        ),
        (GOOD.replace("run: FlowSDE", "run: no_such.module:Algo") % "", "cannot import 'no_such.module:Algo'"),
    ],
)
def test_bad_input_stops_at_once_and_writes_nothing(tmp_path, capsys, text, message):
    storage = tmp_path / "results"
    code = main(["train", "file", write(tmp_path, text), "--storage-path", str(storage)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err), err
    assert not storage.exists()


def test_bad_stop_json_and_missing_file(tmp_path, capsys):
    assert main(["train", "file", write(tmp_path, GOOD % ""), "--stop", "{oops"]) == 2
    assert "--stop must be a JSON object" in capsys.readouterr().err
    assert main(["train", "file", str(tmp_path / "missing.yaml")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "neither an RLlib algorithm checkpoint" in capsys.readouterr().err


TOKENIZER = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pi-config", '{"expert": {"wide": 1}}'], r"expert has no field \['wide'\]"),
        (["--pi-config", '{"foo": 1}'], "PiConfig has no field 'foo'"),
        (["--pi-config", "{oops"], "--pi-config is not valid JSON"),
        (["--render-procs", "0"], "--render-procs must be >= 1"),
        (["--image-shift", "-1"], "--image-shift >= 0"),
    ],
)
def test_bad_sft_options_stop_before_any_demo_is_read(tmp_path, capsys, extra, message):
    argv = ["sft", "--demos", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--model", "pi0"]
    assert main([*argv, "--tokenizer", TOKENIZER, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    state = ["sft", "--demos", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--pi-config", "{}"]
    assert main(state) == 2
    assert "use it with --model pi0/pi05" in capsys.readouterr().err


def test_pi_config_changes_only_the_fields_it_names():
    import argparse

    from rllib_pirl.cli import tiny_pi_config
    from rllib_pirl.models.pi0 import PiConfig

    args = argparse.Namespace(model="pi0", chunk=5, pi_config='{"expert": {"width": 128, "mlp_dim": 256}}')
    config, tiny = tiny_pi_config(args), PiConfig.tiny("pi0", chunk_size=5).to_dict()
    assert config["expert"] == {**tiny["expert"], "width": 128, "mlp_dim": 256}
    assert {k: v for k, v in config.items() if k != "expert"} == {k: v for k, v in tiny.items() if k != "expert"}


def test_an_unfinished_sft_is_neither_overwritten_nor_continued_with_other_options(tmp_path, capsys):
    import numpy as np
    import torch

    from rllib_pirl.models import StateFlowPolicy
    from rllib_pirl.sft import SFT_STATE, save_sft_state

    out = tmp_path / "out"
    out.mkdir()
    model = StateFlowPolicy(obs_dim=3, horizon=2, action_dim=2, hidden_sizes=(8,))
    optimizer = torch.optim.AdamW(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    setup = {"steps": 100, "batch_size": 256, "lr": 3e-4, "seed": 0, "image_shift": 0, "pairs": 10}
    state = str(out / SFT_STATE)
    save_sft_state(state, 40, setup, model, optimizer, schedule, np.random.default_rng(0), torch.Generator())
    before = (out / SFT_STATE).read_bytes()
    argv = ["sft", "--demos", str(tmp_path / "none"), "--out", str(out), "--steps", "100"]
    assert main(argv) == 2
    assert "holds an unfinished SFT (saved after step 40/100 in sft_state.pt): add --resume" in capsys.readouterr().err
    assert main([*argv[:-1], "200", "--resume"]) == 2
    assert "started with other options ((saved, now): {'steps': (100, 200)})" in capsys.readouterr().err
    assert main([*argv, "--resume", "--save-every", "0"]) == 2
    assert "--save-every must be >= 1" in capsys.readouterr().err
    assert (out / SFT_STATE).read_bytes() == before  # nothing lost
    assert main([*argv[:4], str(tmp_path / "empty"), "--resume"]) == 2
    assert "--resume: no unfinished SFT in --out" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 2  # accepted: it goes on to read the (missing) demos
    assert "--resume" not in capsys.readouterr().err
