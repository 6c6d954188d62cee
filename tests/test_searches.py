"""Ray Tune searches from the yaml: sampled values, Optuna + ASHA, PBT, and their bad input."""

import os
import re

import pytest
from conftest import tiny_yaml_config
from test_cli import write

from rllib_pirl.cli import main
from rllib_pirl.experiments import prepare_experiments, run_experiment

TINY = tiny_yaml_config()

OPTUNA_ASHA = (
    """
search:
  env: PointReach
  run: FlowSDE
  num_samples: 3
  stop: {training_iteration: 2}
  tune_config:
    metric: env_runners/episode_return_mean
    mode: max
    search_alg: {type: optuna, seed: 0}
    scheduler: {type: asha, max_t: 2, grace_period: 1}
    max_concurrent_trials: 1
  config:
    lr: {loguniform: [1.0e-4, 1.0e-2]}
    noise_level: {uniform: [0.3, 0.9]}
    num_denoise_steps: {choice: [2, 3]}"""
    + TINY
)


def test_an_optuna_asha_search_samples_three_distinct_learning_rates(tmp_path, ray_session, capsys):
    pytest.importorskip("optuna", reason="the search extra is not installed: pip install 'rllib_pirl[search]'")
    (experiment,) = prepare_experiments(write(tmp_path, OPTUNA_ASHA))
    results = run_experiment(experiment, storage_path=str(tmp_path / "runs"), resource_check=False)
    assert len(results) == 3 and not results.errors
    lrs = [r.config["lr"] for r in results]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert all(0.3 <= r.config["noise_level"] <= 0.9 and r.config["num_denoise_steps"] in (2, 3) for r in results)
    # each trial ran the value it was given (the rollouts' noise level is reported)
    for r in results:
        assert r.metrics["exploration"]["noise_level"] == pytest.approx(r.config["noise_level"])
    assert "best trial by env_runners/episode_return_mean (max)" in capsys.readouterr().out
    # trial folders are named by the searched values, not by the derived init_seed placeholder
    names = [os.path.basename(r.path) for r in results]
    assert all("lr=" in n and "init_seed" not in n and "fn_ph" not in n for n in names), names


PBT = (
    """
pbt:
  env: PointReach
  run: FlowSDE
  num_samples: 2
  stop: {training_iteration: 6}
  tune_config:
    metric: env_runners/episode_return_mean
    mode: max
    scheduler:
      type: pbt
      perturbation_interval: 2
      quantile_fraction: 0.5
      resample_probability: 1.0
      synch: true            # both trials reach each perturbation point (they run in turns here)
      hyperparam_mutations:
        noise_level: [0.2, 0.4, 0.6, 0.8, 1.0]
  config:
    lr: 0.0
    value_lr: 0.0
    noise_level: [[0, 0.5], [192, 0.9]]"""
    + TINY
)


def test_pbt_mutates_the_noise_level_and_the_log_probs_stay_consistent(tmp_path, ray_session):
    # lr 0: the learner's log-probs equal the rollouts' only if both use the same noise level,
    # across PBT's exploit (a restart from another trial's checkpoint with a mutated config)
    # and across the schedule's change (~64 env steps per iteration: 0.5 → 0.9 over 3 iterations).
    from rllib_pirl.settings import schedule_at

    (experiment,) = prepare_experiments(write(tmp_path, PBT))
    results = run_experiment(experiment, storage_path=str(tmp_path / "runs"), resource_check=False)
    assert not results.errors
    schedule, mutations = [[0, 0.5], [192, 0.9]], {0.2, 0.4, 0.6, 0.8, 1.0}
    between, mutated = [], []
    for r in results:
        df = r.metrics_dataframe
        assert (df["learners/default_policy/approx_kl"] < 1e-6).all()
        # each iteration sampled at the schedule's value at the env steps before it, or, after
        # an exploit, at a mutated constant (a synch PBT's paused trial can miss rows here, so the
        # steps before come from each row itself)
        before = df["env_runners/num_env_steps_sampled_lifetime"] - df["env_runners/num_env_steps_sampled"]
        for steps, level in zip(before, df["exploration/noise_level"]):
            if level == pytest.approx(schedule_at(schedule, steps)):
                between += [level] if 0.5 < level < 0.9 else []
            else:
                assert round(level, 6) in mutations, (steps, level)
                mutated.append(level)
    assert between and mutated, (between, mutated)  # the schedule moved, and a mutation happened


@pytest.mark.parametrize(
    "extra, message",
    [
        ("  tune_config: {search_alg: bayes}\n", "search_alg: unknown type 'bayes'; valid: random, optuna, hyperopt"),
        (
            "  tune_config: {scheduler: {type: hyperband}}\n",
            "scheduler: unknown type 'hyperband'; valid: fifo, asha, pbt",
        ),
        ("  tune_config: {scheduler: {type: asha, maxt: 3}}\n", "ASHAScheduler has no argument 'maxt'; valid: .*max_t"),
        ("  tune_config: {mode: maximum}\n", "mode must be 'max' or 'min'"),
        ("  tune_config: {metrc: x}\n", "unknown key 'metrc'"),
        ("  num_samples: 0\n", "num_samples must be an integer >= 1"),
        (
            "  tune_config: {scheduler: {type: pbt, hyperparam_mutations: {noise_levle: [0.1, 0.2]}}}\n",
            "hyperparam_mutations: FlowSDE's config has no key 'noise_levle' to mutate. Did you mean 'noise_level'",
        ),
        (
            "  tune_config: {scheduler: {type: pbt, hyperparam_mutations: {noise_level: [0.1, -0.2]}}}\n",
            "noise_level must be a number >= 0",
        ),
        ("  tune_config: {scheduler: {type: pbt}}\n", "pbt needs hyperparam_mutations"),
    ],
)
def test_bad_tune_config_stops_before_ray_and_writes_nothing(tmp_path, capsys, extra, message):
    text = "exp:\n  env: PointReach\n  run: FlowSDE\n  stop: {training_iteration: 1}\n" + extra + "  config:" + TINY
    storage = tmp_path / "results"
    assert main(["train", "file", write(tmp_path, text), "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not storage.exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("{normal: [0, 1]}", r"config.lr: \{normal: ...\} is not a sampled-value form of the yaml; use one of"),
        ("{uniform: [0.1]}", r"\{uniform: \[lo, hi\]\} needs two numbers"),
        ("{loguniform: [0.0, 0.1]}", "needs lo > 0"),
        ("{uniform: [0.2, 0.1]}", "needs lo < hi"),
        ("{choice: []}", "needs a non-empty list"),
        ("{randint: [1.5, 3]}", "needs integers"),
    ],
)
def test_bad_sampled_values_are_refused(tmp_path, capsys, value, message):
    text = "exp:\n  env: PointReach\n  run: FlowSDE\n  config:\n    lr: " + value + TINY
    assert main(["train", "file", write(tmp_path, text)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_every_end_of_a_range_and_every_choice_is_validated(tmp_path, capsys):
    # the first value is valid, the upper end is not: refused before any trial could draw it
    text = (
        "exp:\n  env: PointReach\n  run: FlowSDE\n  config:\n    noise_std_range: {choice: [[0.1, 0.2], [0.3, 0.2]]}"
        + TINY
    )
    assert main(["train", "file", write(tmp_path, text)]) == 2
    assert "0 < min <= max, got min=0.3" in capsys.readouterr().err


def test_grid_search_with_a_model_based_search_and_pbt_with_one_are_refused(tmp_path, capsys):
    grid = (
        "exp:\n  env: PointReach\n  run: FlowSDE\n  tune_config: {search_alg: hyperopt}\n  config:\n    lr: {grid_search: [0.1, 0.2]}"
        + TINY
    )
    assert main(["train", "file", write(tmp_path, grid)]) == 2
    assert "hyperopt cannot expand grid_search; use {choice: [...]}" in capsys.readouterr().err
    pbt = (
        "exp:\n  env: PointReach\n  run: FlowSDE\n  tune_config:\n    search_alg: optuna\n"
        "    scheduler: {type: pbt, hyperparam_mutations: {lr: [0.1, 0.2]}}\n  config:" + TINY
    )
    assert main(["train", "file", write(tmp_path, pbt)]) == 2
    assert "pbt cannot be combined with a search algorithm" in capsys.readouterr().err


def test_a_missing_search_library_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else find_spec(name, *a))
    text = "exp:\n  env: PointReach\n  run: FlowSDE\n  tune_config: {search_alg: optuna}\n  config:" + TINY
    assert main(["train", "file", write(tmp_path, text)]) == 2
    assert "optuna needs the optuna package: pip install 'rllib_pirl[search]'" in capsys.readouterr().err
