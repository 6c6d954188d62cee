"""Experiments from tuned-example yaml files: load, validate, translate to Tune, run.

The classic RLlib tuned-examples format (what ``rllib train file`` reads)::

    experiment-name:
      env: PointReach            # a registered env name or a gymnasium id
      run: FlowSDE               # a registered algorithm or "package.module:Class"
      stop: {training_iteration: 50}
      config: {lr: 3.0e-4, ...}  # keys of the algorithm's config (grid_search allowed)
      checkpoint_config: {checkpoint_frequency: 10, checkpoint_at_end: true}

:func:`prepare_experiments` validates everything (every experiment's algorithm, env, config
keys and values, paths) before anything is written; :func:`check_cluster` joins the Ray
cluster and refuses trials it can never hold; :func:`run_experiment` runs one with Ray Tune.
From Python::

    from rllib_pirl.experiments import prepare_experiments, run_experiment
    for experiment in prepare_experiments("tuned_examples/flow_sde_point_reach.yaml"):
        results = run_experiment(experiment, storage_path="/tmp/runs")
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from rllib_pirl.envs import ENVS
from rllib_pirl.errors import UsageError
from rllib_pirl.imports import import_object
from rllib_pirl.models.checkpoint import is_model_checkpoint
from rllib_pirl.models.pi0.layouts import check_pretrained
from rllib_pirl.searches import (
    candidates,
    has_space,
    is_space,
    make_scheduler,
    make_search_alg,
    metric_and_mode,
    pbt_mutations_as_spaces,
    scheduler_type,
    space_errors,
    tune_config_errors,
    tune_space,
)

EXPERIMENT_KEYS = (
    "env",
    "run",
    "stop",
    "config",
    "checkpoint_config",
    "failure_config",
    "num_samples",
    "tune_config",
)
FAILURE_KEYS = ("max_failures", "fail_fast")
CHECKPOINT_KEYS = (
    "num_to_keep",
    "checkpoint_score_attribute",
    "checkpoint_score_order",
    "checkpoint_frequency",
    "checkpoint_at_end",
)


def _suggest(name, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _resolve_path(path: str) -> str:
    """``$VARS`` and ``~`` expanded, absolute (relative to where `rllib` runs)."""
    return os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


def config_dict_for_rllib(config: dict[str, Any]) -> dict[str, Any]:
    """The yaml's config as ``AlgorithmConfig.update_from_dict`` takes it: the RLModule's
    ``model_config`` (a read-only property) is stored as ``_model_config``, and a relative
    ``init_checkpoint`` becomes absolute."""
    config = dict(config)
    if "model_config" in config:
        model_config = dict(config.pop("model_config") or {})
        init = model_config.get("init_checkpoint")
        if isinstance(init, str):
            # Relative to where `rllib` runs (Tune trials run in their own folders).
            model_config["init_checkpoint"] = _resolve_path(init)
            if not is_model_checkpoint(model_config["init_checkpoint"]):
                raise UsageError(
                    f"model_config.init_checkpoint: {init!r} is not a model checkpoint folder (config.json + "
                    "model.safetensors, from `rllib sft`); relative paths are resolved from the current directory."
                )
        kwargs = dict(model_config.get("model_kwargs") or {})
        for key in ("pretrained", "tokenizer"):  # π0 / π0.5 files, checked before any rollout
            value = kwargs.get(key)
            if isinstance(value, str):
                path = _resolve_path(value)
                if not os.path.exists(path):
                    raise UsageError(
                        f"model_config.model_kwargs.{key}: {value!r} does not exist ({path}). "
                        + (
                            "Point it at a π0 / π0.5 checkpoint folder (lerobot, openpi or rllib_pirl layout)."
                            if key == "pretrained"
                            else "Point it at PaliGemma's SentencePiece tokenizer file."
                        )
                    )
                kwargs[key] = path
        if isinstance(kwargs.get("pretrained"), str):  # its format, architecture and statistics
            try:
                check_pretrained(kwargs["pretrained"], kwargs)
            except (ValueError, FileNotFoundError) as e:
                raise UsageError(f"model_config.model_kwargs.pretrained: {e}") from None
        if kwargs:
            model_config["model_kwargs"] = kwargs
        config["_model_config"] = model_config
    return config


def progress_callback(min_interval_s: float = 5.0):
    """A Tune callback printing one line per trial result (at most every ``min_interval_s``
    seconds per trial, always the first): iteration, policy steps (RLlib env steps: one per action chunk), return, success, KL."""
    from ray import tune

    class ProgressLine(tune.Callback):
        def __init__(self):
            self.last = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            now = time.time()
            if now - self.last.get(trial.trial_id, 0.0) < min_interval_s and result.get("training_iteration") != 1:
                return
            self.last[trial.trial_id] = now
            runners = result.get("env_runners", {})
            learner = result.get("learners", {}).get("default_policy", {})

            def fmt(value, spec):
                return format(value, spec) if isinstance(value, (int, float)) else "n/a"

            print(
                f"[{trial.trial_id}] iter {result.get('training_iteration')}"
                f"  policy steps {fmt(runners.get('num_env_steps_sampled_lifetime'), '.0f')}"
                f"  return {fmt(runners.get('episode_return_mean'), '.3f')}"
                f"  success {fmt(runners.get('success_rate'), '.3f')}"
                f"  kl {fmt(learner.get('approx_kl'), '.4f')}  clip {fmt(learner.get('clip_fraction'), '.3f')}"
                f"  ({fmt(result.get('time_total_s'), '.0f')} s)",
                flush=True,
            )

    return ProgressLine()


def print_best(results, experiment: Experiment) -> None:
    """The best trial of a search by its metric (last result), with its searched values."""
    from ray.tune.utils.util import unflattened_lookup

    metric, mode = metric_and_mode(experiment.tune_config)
    try:
        best = results.get_best_result(metric, mode)
    except (RuntimeError, KeyError, ValueError) as e:  # no trial reported the metric
        print(f"   best trial: none ({e})", flush=True)
        return
    searched = list(_searched_keys(experiment))
    values = {k: best.config.get(k) for k in searched}
    value = unflattened_lookup(metric, best.metrics, default=None)
    print(f"   best trial by {metric} ({mode}): {value} at {best.path}  {values}", flush=True)


def _searched_keys(experiment: Experiment):
    for key, value in experiment.config.items():
        if is_space(value):
            yield "_model_config" if key == "model_config" else key
    if experiment.scheduler_type() == "pbt":
        yield from experiment.tune_config["scheduler"]["hyperparam_mutations"]


def load_experiments(path: str) -> dict[str, dict[str, Any]]:
    """Parse a tuned-example yaml file and check its structure."""
    import yaml

    if not os.path.isfile(path):
        raise UsageError(f"No such file: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UsageError(f"Malformed yaml in {path}: {e}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"{path} must map experiment names to {{env, run, stop, config, checkpoint_config}}, "
            f"got {type(data).__name__}."
        )
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise UsageError(f"Experiment {name!r} in {path} must be a mapping with keys {EXPERIMENT_KEYS}.")
        for key in spec:
            if key not in EXPERIMENT_KEYS:
                raise UsageError(
                    f"Experiment {name!r}: unknown key {key!r}; valid keys: {', '.join(EXPERIMENT_KEYS)}."
                    + _suggest(key, EXPERIMENT_KEYS)
                )
        for key in ("run", "env"):
            if key not in spec:
                raise UsageError(f"Experiment {name!r} has no {key!r} key.")
        for key in ("stop", "config", "checkpoint_config", "failure_config", "tune_config"):
            if not isinstance(spec.get(key, {}), dict):
                raise UsageError(f"Experiment {name!r}: {key!r} must be a mapping.")
        for key, value in spec.get("failure_config", {}).items():
            if key not in FAILURE_KEYS:
                raise UsageError(
                    f"Experiment {name!r}: unknown failure_config key {key!r}; valid: {', '.join(FAILURE_KEYS)}."
                )
            if key == "max_failures" and (not isinstance(value, int) or isinstance(value, bool) or value < -1):
                raise UsageError(
                    f"Experiment {name!r}: failure_config.max_failures must be an integer >= 0 (-1: always), got {value!r}."
                )
        samples = spec.get("num_samples", 1)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise UsageError(f"Experiment {name!r}: num_samples must be an integer >= 1, got {samples!r}.")
    return data


def resolve_algorithm(run: str):
    """A registered algorithm name, or ``package.module:Class``."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.registry import ALGORITHMS as RLLIB_ALGORITHMS

    from rllib_pirl.algorithms import ALGORITHMS

    if not isinstance(run, str):
        raise UsageError(f"run: must be a string, got {run!r}.")
    if ":" in run:
        try:
            cls = import_object(run)
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"run: cannot import {run!r}: {e}") from None
    elif run in ALGORITHMS:
        cls = ALGORITHMS[run]
    elif run in RLLIB_ALGORITHMS:
        cls = RLLIB_ALGORITHMS[run]()[0]
    else:
        choices = list(ALGORITHMS) + sorted(RLLIB_ALGORITHMS)
        raise UsageError(
            f"run: unknown algorithm {run!r}. Valid: {', '.join(choices)}, or 'package.module:Class'."
            + _suggest(run, choices)
        )
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UsageError(f"run: {run!r} is not an RLlib Algorithm class.")
    return cls


def check_env(env) -> None:
    """A registered env name or a gymnasium id, else a :class:`UsageError`."""
    import gymnasium as gym
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from rllib_pirl.algorithms import register

    register()
    if isinstance(env, str) and (_global_registry.contains(ENV_CREATOR, env) or env in gym.registry):
        return
    raise UsageError(
        f"env: unknown env {env!r}. Registered by rllib_pirl: {', '.join(ENVS)}; "
        "or any gymnasium id (with a chunked action space; see the 'ChunkedGym' env)."
        + _suggest(env, list(ENVS) + list(gym.registry))
    )


def build_config(algo_cls, env, config: dict[str, Any], name: str, tune_config: dict[str, Any] | None = None):
    """The algorithm's config for ``config`` (sampled values at their first value),
    validated: unknown keys and invalid values stop here, also at every end of a sampled
    range, every choice and every PBT mutation (see :func:`rllib_pirl.searches.candidates`)."""
    errors = space_errors(config) + tune_config_errors(tune_config or {}, config)
    if errors:
        raise UsageError(f"Experiment {name!r}: " + " ".join(errors))
    searched = dict(config)
    if scheduler_type(tune_config or {}) == "pbt":
        mutations = tune_config["scheduler"]["hyperparam_mutations"]
        default = algo_cls.get_default_config()
        for key in mutations:
            if not hasattr(default, default._translate_special_keys(key, warn_deprecated=False)):
                known = [k for k in vars(default) if not k.startswith("_")]
                raise UsageError(
                    f"Experiment {name!r}: tune_config.scheduler.hyperparam_mutations: {algo_cls.__name__}'s config "
                    f"has no key {key!r} to mutate." + _suggest(key, known)
                )
        searched.update(pbt_mutations_as_spaces(mutations))
    configs = [_validated_config(algo_cls, env, sample, name) for sample in candidates(searched)]
    return configs[0]


def _validated_config(algo_cls, env, config: dict[str, Any], name: str):
    algo_config = algo_cls.get_default_config()
    sample = copy.deepcopy(config_dict_for_rllib(config))
    for key in sample:
        translated = algo_config._translate_special_keys(key, warn_deprecated=False)
        if not hasattr(algo_config, translated):
            known = [k for k in vars(algo_config) if not k.startswith("_")] + ["model_config"]
            key = "model_config" if key == "_model_config" else key
            raise UsageError(
                f"Experiment {name!r}: {algo_cls.__name__}'s config has no key {key!r}." + _suggest(key, known)
            )
    try:
        algo_config = algo_config.update_from_dict(sample).environment(env)
        algo_config.validate()
    except (ValueError, TypeError) as e:
        msg = str(e).split("\nTo suppress all validation errors")[0]
        raise UsageError(f"Experiment {name!r}: invalid config: {msg}") from None
    _check_pretrained_against_env(algo_config, name)
    return algo_config


def _check_pretrained_against_env(algo_config, name: str) -> None:
    """A π0 / π0.5 ``pretrained`` checkpoint against the env's cameras and state size, where the
    env table knows them without building the env (before Ray starts)."""
    kwargs = algo_config._model_config.get("model_kwargs") or {}
    entry = ENVS.get(algo_config.env) if isinstance(algo_config.env, str) else None
    if not isinstance(kwargs.get("pretrained"), str) or entry is None or entry.observation_features is None:
        return
    features = entry.observation_features(dict(algo_config.env_config))
    try:
        check_pretrained(kwargs["pretrained"], kwargs, features.get("cameras"), features.get("state_dim"))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"Experiment {name!r}: model_config.model_kwargs.pretrained: {e}") from None


@dataclass
class Experiment:
    """One validated experiment of a yaml file."""

    name: str
    algo_cls: type
    env: str
    config: dict[str, Any]  # the yaml's config (Tune search spaces included)
    stop: dict[str, Any] = field(default_factory=dict)
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    algo_config: Any = None  # the validated AlgorithmConfig (search spaces at their first value)
    memory_plan: Any = None  # π0 / π0.5 on GPUs: the MemoryPlan of a learner and an env runner
    num_samples: int = 1
    tune_config: dict[str, Any] = field(default_factory=dict)  # see rllib_pirl.searches
    failure_config: dict[str, Any] = field(default_factory=dict)  # Tune's FailureConfig

    def param_space(self) -> dict[str, Any]:
        """The config as Tune's ``param_space`` (sampled values as Tune's search spaces).

        ``model_config.init_seed`` (the seed of the initial weights, equal in every process
        of a trial: only trainable weights travel to the env runners, which check that the
        frozen ones agree) is fixed when Tune creates the trial — the trial's ``seed``, else
        drawn — so that a trial restored in new processes (``--resume``, a restarted trial)
        builds the frozen weights of its checkpoint. Under PBT, whose trials continue from
        each other's checkpoints, the whole population gets one."""
        from ray import tune

        space = tune_space(config_dict_for_rllib(self.config))
        model_config = space.get("_model_config", {})
        if "init_seed" not in model_config:
            if self.scheduler_type() == "pbt":
                seed = self.config.get("seed")
                init_seed = seed if isinstance(seed, int) else zlib.crc32(self.name.encode()) % 2**31
            else:
                init_seed = tune.sample_from(_trial_init_seed)
            space["_model_config"] = dict(model_config, init_seed=init_seed)
        return dict(space, env=self.env)

    def scheduler_type(self) -> str:
        return scheduler_type(self.tune_config)

    def is_search(self) -> bool:
        return self.num_samples > 1 or has_space(self.config) or bool(self.tune_config)

    def tune_run_config(self):
        """Tune's ``TuneConfig`` (search algorithm and scheduler objects made fresh)."""
        from ray import tune

        return tune.TuneConfig(
            num_samples=self.num_samples,
            search_alg=make_search_alg(self.tune_config),
            scheduler=make_scheduler(self.tune_config),
            max_concurrent_trials=self.tune_config.get("max_concurrent_trials"),
            time_budget_s=self.tune_config.get("time_budget_s"),
            trial_dirname_creator=trial_dirname,
        )


def trial_dirname(trial) -> str:
    """Tune's trial folder name (``TRAINABLE_ID_INDEX_key=value,…_DATE``) without ``init_seed``: the
    seed of a trial's initial weights is derived, not searched, and under a search algorithm its
    tag is Tune's placeholder (``init_seed=fn_ph_…``), not a value."""
    from ray.tune.utils import date_str

    tag = re.sub(r"(^|_|,)init_seed=[^,]*,?", r"\1", trial.experiment_tag).rstrip("_,")
    max_len = int(os.environ.get("TUNE_MAX_LEN_IDENTIFIER", "130"))  # Tune's own limit
    return f"{trial}_{tag}"[:max_len] + f"_{date_str()}"


def _trial_init_seed(spec) -> int:
    seed = spec.config.get("seed")
    return seed if isinstance(seed, int) else secrets.randbelow(2**31)


def gpu_memory_gib() -> float | None:
    """The memory of this machine's first GPU, None without one."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None


def check_memory(name: str, algo_config, gpu_gib: float | None):
    """The memory plan of a π0 / π0.5 run on GPUs (None otherwise); a :class:`UsageError`
    when it does not fit ``gpu_gib`` (not checked when None)."""
    from rllib_pirl.memory_plan import check_memory_plan

    if not hasattr(algo_config, "prefix_cache"):  # not a FlowPPO config
        return None
    plan, errors = check_memory_plan(algo_config, gpu_gib or float("inf"))
    if errors:
        raise UsageError(f"Experiment {name!r}: " + " ".join(errors))
    return plan


def prepare_experiments(
    path: str, stop: dict[str, Any] | None = None, gpu_gib: float | None = None
) -> list[Experiment]:
    """Load and validate every experiment of a yaml file (``stop`` replaces their stopping
    criteria): a :class:`UsageError` before anything runs or is written. π0 / π0.5 runs on
    GPUs get a memory plan, checked against ``gpu_gib`` GiB GPUs (not checked when None)."""
    if stop is not None and not isinstance(stop, dict):
        raise UsageError(f"stop must be a mapping such as {{'training_iteration': 5}}, got {stop!r}.")
    experiments = []
    for name, spec in load_experiments(path).items():
        algo_cls = resolve_algorithm(spec["run"])
        check_env(spec["env"])
        algo_config = build_config(algo_cls, spec["env"], spec.get("config", {}), name, spec.get("tune_config"))
        ckpt = spec.get("checkpoint_config", {})
        for key in ckpt:
            if key not in CHECKPOINT_KEYS:
                raise UsageError(
                    f"Experiment {name!r}: unknown checkpoint_config key {key!r}; valid: {', '.join(CHECKPOINT_KEYS)}."
                    + _suggest(key, CHECKPOINT_KEYS)
                )
        experiments.append(
            Experiment(
                name=name,
                algo_cls=algo_cls,
                env=spec["env"],
                config=spec.get("config", {}),
                stop=stop if stop is not None else spec.get("stop", {}),
                checkpoint_config=ckpt,
                algo_config=algo_config,
                memory_plan=check_memory(name, algo_config, gpu_gib),
                num_samples=spec.get("num_samples", 1),
                tune_config=spec.get("tune_config", {}),
                failure_config=spec.get("failure_config", {}),
            )
        )
    return experiments


def check_cluster(experiments: list[Experiment], address: str | None = None, resource_check: bool = True) -> None:
    """Join the Ray cluster (``address``, else ``$RAY_ADDRESS``, else a local one) and, with
    ``resource_check``, refuse experiments whose trials it can never hold (:class:`UsageError`)."""
    from rllib_pirl.cluster import check_resources, connect

    connect(address)
    if resource_check:
        for experiment in experiments:
            check_resources(experiment.name, experiment.algo_cls, experiment.algo_config)


def storage_root(storage_path: str | None) -> str:
    return os.path.abspath(os.path.expanduser(storage_path or "~/ray_results"))


def check_resumable(experiments: list[Experiment], storage_path: str | None) -> dict[str, bool]:
    """For ``--resume``: which experiments have a saved state to continue (Tune's experiment
    state in ``storage_path/name``); the others start afresh. A :class:`UsageError` when none
    has one, naming where it looked."""
    from ray import tune

    root = storage_root(storage_path)
    resumable = {e.name: tune.Tuner.can_restore(os.path.join(root, e.name)) for e in experiments}
    if not any(resumable.values()):
        looked = ", ".join(os.path.join(root, e.name) for e in experiments)
        raise UsageError(
            f"--resume: no experiment to continue: no Tune experiment state in {looked}. Give the --storage-path "
            "of the interrupted run (default ~/ray_results), or start it without --resume."
        )
    return resumable


def run_experiment(
    experiment: Experiment,
    storage_path: str | None = None,
    verbose: bool = True,
    address: str | None = None,
    resource_check: bool = True,
    resume: bool = False,
):
    """Run ``experiment`` with Ray Tune on the cluster of :func:`check_cluster` (results,
    TensorBoard files and checkpoints under ``storage_path/name``, default ``~/ray_results``);
    returns Tune's ``ResultGrid``. With ``resume``, continue the experiment saved there:
    finished trials stay finished, unfinished and errored ones continue from their last
    checkpoints (Tune's ``Tuner.restore``; its stopping criteria and search state are the
    saved ones). With ``verbose``, one progress line per trial result and one summary line
    per trial."""
    from ray import tune

    check_cluster([experiment], address, resource_check)

    storage = storage_root(storage_path)
    name = experiment.name
    if verbose:
        what = "resuming" if resume else f"stop={experiment.stop}"
        print(f"== {name}: {experiment.algo_cls.__name__} on {experiment.env}, {what}", flush=True)
        print(f"   results: {os.path.join(storage, name)}  (tensorboard --logdir {storage})", flush=True)
    if resume:
        tuner = tune.Tuner.restore(
            os.path.join(storage, name), trainable=experiment.algo_cls, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = _new_tuner(experiment, storage, verbose)
    results = tuner.fit()
    if verbose and experiment.is_search():
        print_best(results, experiment)
    if verbose:
        for r in results:
            runners = (r.metrics or {}).get("env_runners", {})
            print(
                f"   trial {r.path}: episode_return_mean={runners.get('episode_return_mean')}, "
                f"success_rate={runners.get('success_rate')}, checkpoint={r.checkpoint.path if r.checkpoint else None}",
                flush=True,
            )
    return results


def _new_tuner(experiment: Experiment, storage: str, verbose: bool):
    from ray import tune

    name = experiment.name
    return tune.Tuner(
        experiment.algo_cls,
        param_space=experiment.param_space(),
        tune_config=experiment.tune_run_config(),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=experiment.stop,
            checkpoint_config=tune.CheckpointConfig(**{"checkpoint_at_end": True, **experiment.checkpoint_config}),
            failure_config=tune.FailureConfig(**experiment.failure_config),
            callbacks=[progress_callback()] if verbose else None,
            verbose=1 if verbose else 0,
        ),
    )
