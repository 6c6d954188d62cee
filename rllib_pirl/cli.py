"""The ``rllib`` command (Ray 2.60 ships none).

  rllib train file FILE.yaml [--stop JSON] [--storage-path DIR]
  rllib evaluate CHECKPOINT [--episodes N] [--seed S]

``train file`` reads the classic tuned_examples format::

    experiment-name:
      env: PointReach            # a registered env name or a gymnasium id
      run: FlowSDE               # a registered algorithm or "package.module:Class"
      stop: {training_iteration: 50}
      config: {lr: 3.0e-4, ...}  # keys of the algorithm's config (grid_search allowed)
      checkpoint_config: {checkpoint_frequency: 10, checkpoint_at_end: true}

and runs it through Ray Tune. Everything is validated before anything is written.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import pickle
import sys
from typing import Any

EXPERIMENT_KEYS = ("env", "run", "stop", "config", "checkpoint_config")
CHECKPOINT_KEYS = (
    "num_to_keep",
    "checkpoint_score_attribute",
    "checkpoint_score_order",
    "checkpoint_frequency",
    "checkpoint_at_end",
)
MODULE_CHECKPOINT = os.path.join("learner_group", "learner", "rl_module", "default_policy")


class UsageError(Exception):
    """Bad input: reported as one clear message, exit code 2."""


def _suggest(name, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _first_sample(value):
    """A concrete stand-in for a Tune search space (its first grid value), for validation."""
    if isinstance(value, dict):
        if set(value) == {"grid_search"}:
            return _first_sample(value["grid_search"][0])
        return {k: _first_sample(v) for k, v in value.items()}
    return value


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
        if kwargs:
            model_config["model_kwargs"] = kwargs
        config["_model_config"] = model_config
    return config


def progress_callback(min_interval_s: float = 5.0):
    """A Tune callback printing one line per trial result (at most every ``min_interval_s``
    seconds per trial, always the first): iteration, policy steps (RLlib env steps: one per action chunk), return, success, KL."""
    import time

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
        for key in ("stop", "config", "checkpoint_config"):
            if not isinstance(spec.get(key, {}), dict):
                raise UsageError(f"Experiment {name!r}: {key!r} must be a mapping.")
    return data


def resolve_algorithm(run: str):
    """A registered algorithm name, or ``package.module:Class``."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.registry import ALGORITHMS as RLLIB_ALGORITHMS

    import rllib_pirl

    if not isinstance(run, str):
        raise UsageError(f"run: must be a string, got {run!r}.")
    if ":" in run:
        from rllib_pirl.rl_module import import_object

        try:
            cls = import_object(run)
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"run: cannot import {run!r}: {e}") from None
    elif run in rllib_pirl.ALGORITHMS:
        cls = rllib_pirl.ALGORITHMS[run]
    elif run in RLLIB_ALGORITHMS:
        cls = RLLIB_ALGORITHMS[run]()[0]
    else:
        choices = list(rllib_pirl.ALGORITHMS) + sorted(RLLIB_ALGORITHMS)
        raise UsageError(
            f"run: unknown algorithm {run!r}. Valid: {', '.join(choices)}, or 'package.module:Class'."
            + _suggest(run, choices)
        )
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UsageError(f"run: {run!r} is not an RLlib Algorithm class.")
    return cls


def check_env(env) -> None:
    import gymnasium as gym
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from rllib_pirl.envs import ENV_CREATORS

    if isinstance(env, str) and (_global_registry.contains(ENV_CREATOR, env) or env in gym.registry):
        return
    raise UsageError(
        f"env: unknown env {env!r}. Registered by rllib_pirl: {', '.join(ENV_CREATORS)}; "
        "or any gymnasium id (with a chunked action space; see the 'ChunkedGym' env)."
        + _suggest(env, list(ENV_CREATORS) + list(gym.registry))
    )


def build_config(algo_cls, env, config: dict[str, Any], name: str):
    """The algorithm's config for ``config`` (search spaces at their first value),
    validated: unknown keys and invalid values stop here."""
    algo_config = algo_cls.get_default_config()
    sample = _first_sample(copy.deepcopy(config_dict_for_rllib(config)))
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
    return algo_config


def cmd_train_file(args) -> int:
    import rllib_pirl  # noqa: F401  (registers algorithms and envs)

    experiments = load_experiments(args.file)
    stop_override = None
    if args.stop is not None:
        try:
            stop_override = json.loads(args.stop)
        except json.JSONDecodeError as e:
            raise UsageError(f"--stop must be a JSON object, e.g. '{{\"training_iteration\": 5}}': {e}") from None
        if not isinstance(stop_override, dict):
            raise UsageError("--stop must be a JSON object, e.g. '{\"training_iteration\": 5}'.")

    # Validate everything before Tune writes anything.
    prepared = []
    for name, spec in experiments.items():
        algo_cls = resolve_algorithm(spec["run"])
        check_env(spec["env"])
        build_config(algo_cls, spec["env"], spec.get("config", {}), name)
        ckpt = spec.get("checkpoint_config", {})
        for key in ckpt:
            if key not in CHECKPOINT_KEYS:
                raise UsageError(
                    f"Experiment {name!r}: unknown checkpoint_config key {key!r}; valid: {', '.join(CHECKPOINT_KEYS)}."
                )
        stop = stop_override if stop_override is not None else spec.get("stop", {})
        prepared.append((name, algo_cls, spec, stop, ckpt))

    import ray
    from ray import tune

    storage = os.path.abspath(os.path.expanduser(args.storage_path or "~/ray_results"))
    for name, algo_cls, spec, stop, ckpt in prepared:
        param_space = dict(config_dict_for_rllib(spec.get("config", {})), env=spec["env"])
        checkpoint_config = tune.CheckpointConfig(**{"checkpoint_at_end": True, **ckpt})
        print(f"== {name}: {algo_cls.__name__} on {spec['env']}, stop={stop}", flush=True)
        print(f"   results: {os.path.join(storage, name)}  (tensorboard --logdir {storage})", flush=True)
        tuner = tune.Tuner(
            algo_cls,
            param_space=param_space,
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=stop,
                checkpoint_config=checkpoint_config,
                callbacks=[progress_callback()],
                verbose=1,
            ),
        )
        results = tuner.fit()
        failed = [r for r in results if r.error]
        for r in results:
            runners = (r.metrics or {}).get("env_runners", {})
            ckpt_path = r.checkpoint.path if r.checkpoint else None
            print(
                f"   trial {r.path}: episode_return_mean={runners.get('episode_return_mean')}, "
                f"success_rate={runners.get('success_rate')}, checkpoint={ckpt_path}",
                flush=True,
            )
        if failed:
            for r in failed:
                print(f"   trial failed: {r.error}", file=sys.stderr)
            return 1
    if ray.is_initialized():
        ray.shutdown()
    return 0


def load_checkpoint(path: str):
    """``(module, algorithm config dict)`` from an Algorithm checkpoint folder."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    import rllib_pirl  # noqa: F401

    path = os.path.abspath(os.path.expanduser(path))
    module_dir = os.path.join(path, MODULE_CHECKPOINT)
    ctor = os.path.join(path, "class_and_ctor_args.pkl")
    if not (os.path.isdir(module_dir) and os.path.isfile(ctor)):
        raise UsageError(
            f"{path} is neither an RLlib algorithm checkpoint (expected {MODULE_CHECKPOINT}/ and "
            "class_and_ctor_args.pkl; pass a trial's checkpoint_00000N folder) nor a model checkpoint "
            "(config.json and model.safetensors, from `rllib sft`)."
        )
    with open(ctor, "rb") as f:
        config = pickle.load(f)["ctor_args_and_kwargs"][0][0]
    module = RLModule.from_checkpoint(module_dir)
    module.eval()
    return module, config


def module_for_model(path: str, env, num_denoise_steps: int, instructions=None):
    """A deterministic FlowRLModule around a model checkpoint (e.g. from `rllib sft`);
    ``instructions``: the env's, one per ``task_id`` (they replace the checkpoint's prompts,
    whose task order is the SFT's)."""
    from rllib_pirl.rl_module import FlowRLModule

    space = env.action_space
    model_config = {"init_checkpoint": path, "num_denoise_steps": num_denoise_steps, "action_chunk": space.shape[0]}
    if instructions is not None:
        model_config["instructions"] = list(instructions)
    module = FlowRLModule(observation_space=env.observation_space, action_space=space, model_config=model_config)
    module.eval()
    return module


def is_model_checkpoint(path: str) -> bool:
    from rllib_pirl.models.checkpoint import is_model_checkpoint as check

    return check(path)


def _evaluate_task(job: dict, module=None):
    """Evaluate one task (one env, made here and closed): ``(EvalResult, module)``; the
    module is loaded from the checkpoint when not given."""
    from rllib_pirl.evaluation import evaluate

    def progress(i, partial):
        if i % job["every"] == 0 or i == job["episodes"]:
            print(
                f"{job['prefix']} {i}/{job['episodes']} episodes, mean return {partial.mean_return:.3f}, "
                f"success {partial.success_rate:.3f}",
                flush=True,
            )

    env = job["make"]()
    try:
        if module is None and job["model_checkpoint"]:
            try:
                module = module_for_model(job["checkpoint"], env, job["num_denoise_steps"], job["instructions"])
            except ValueError as e:  # the checkpoint does not fit the env
                raise UsageError(f"{job['checkpoint']} does not fit --env {job['env']}: {e}") from None
        elif module is None:
            module = load_checkpoint(job["checkpoint"])[0]
        result = evaluate(
            module,
            env,
            job["episodes"],
            seed=job["seed"],
            explore=job["explore"],
            normalize_actions=job["normalize_actions"],
            clip_actions=job["clip_actions"],
            progress=progress,
            video_dir=job["video_dir"],
        )
        return result, module
    finally:
        env.close()


def _evaluate_task_in_worker(job: dict):
    """:func:`_evaluate_task` in a worker process of ``rllib evaluate --workers``."""
    import torch

    import rllib_pirl  # noqa: F401  (registers the envs)

    torch.set_num_threads(1)
    return _evaluate_task(job)[0]


def cmd_evaluate(args) -> int:
    import torch

    from rllib_pirl.evaluation import EvalResult, evaluation_env_makers

    torch.set_num_threads(1)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}.")
    overrides = {}
    if args.env_config:
        try:
            overrides = json.loads(args.env_config)
        except json.JSONDecodeError as e:
            raise UsageError(f"--env-config must be a JSON object: {e}") from None
    model_checkpoint = is_model_checkpoint(args.checkpoint)
    if model_checkpoint:
        if not args.env:
            raise UsageError("A model checkpoint needs --env (and usually --env-config) to evaluate on.")
        import rllib_pirl  # noqa: F401

        check_env(args.env)
        config = {"env": args.env, "env_config": overrides, "normalize_actions": True, "clip_actions": False}
        makers = evaluation_env_makers(args.env, dict(overrides))
        module = None  # built from the first env's spaces
    else:
        module, config = load_checkpoint(args.checkpoint)
        env_config = dict(config.get("env_config") or {}, **overrides)
        makers = evaluation_env_makers(args.env or config["env"], env_config)
    env_name = args.env or config["env"]
    from rllib_pirl.envs import ENV_INSTRUCTIONS

    # A model checkpoint gets the env's instructions by task_id (its own follow the SFT's task
    # order); an algorithm checkpoint's module already has its env's.
    instructions = None
    if model_checkpoint and env_name in ENV_INSTRUCTIONS:
        instructions = ENV_INSTRUCTIONS[env_name](dict(overrides))
    if env_name == "LIBERO":  # the standard protocol: each task's 50 fixed initial states, in order
        args.episodes = 50 - args.seed if args.episodes is None else args.episodes
        if args.seed < 0 or args.seed + args.episodes > 50:
            raise UsageError(
                f"LIBERO episodes are the tasks' 50 fixed initial states (episode i = initial state --seed + i): "
                f"--seed {args.seed} --episodes {args.episodes} asks for states {args.seed}.."
                f"{args.seed + args.episodes - 1}, outside 0..49. The standard protocol is --episodes 50 (the default)."
            )
    args.episodes = 100 if args.episodes is None else args.episodes
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}.")
    per_task = f" per task ({len(makers)} tasks)" if len(makers) > 1 else ""
    print(
        f"Evaluating {args.checkpoint} on {config['env']} ({'stochastic' if args.explore else 'deterministic'} "
        f"policy, {'initial states' if env_name == 'LIBERO' else 'seeds'} {args.seed}..{args.seed + args.episodes - 1}"
        f"{per_task})",
        flush=True,
    )
    jobs = [
        {
            "checkpoint": args.checkpoint,
            "model_checkpoint": model_checkpoint,
            "instructions": instructions,
            "env": env_name,
            "make": make,
            "episodes": args.episodes,
            "seed": args.seed,
            "explore": args.explore,
            "num_denoise_steps": args.num_denoise_steps,
            "normalize_actions": config.get("normalize_actions", True),
            "clip_actions": config.get("clip_actions", False),
            "video_dir": args.video_dir,
            "prefix": f"  task {index + 1}/{len(makers)}:" if len(makers) > 1 else " ",
            "every": max(1, args.episodes // 10),
        }
        for index, make in enumerate(makers)
    ]
    result = EvalResult()
    if args.workers > 1 and len(jobs) > 1:
        import concurrent.futures
        import multiprocessing

        print(f"  {len(jobs)} tasks over {min(args.workers, len(jobs))} worker processes", flush=True)
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(min(args.workers, len(jobs)), mp_context=context) as pool:
            for task_result in pool.map(_evaluate_task_in_worker, jobs):  # in task order
                result.extend(task_result)
    else:
        for job in jobs:
            task_result, module = _evaluate_task(job, module)
            result.extend(task_result)
    print(result.summary())
    if args.video_dir:
        print(f"videos (first 3 episodes of each task, camera observations only): {args.video_dir}")
    return 0


def cmd_demos(args) -> int:
    from rllib_pirl.demos import generate_demos
    from rllib_pirl.envs.maniskill import SUITE

    tasks = SUITE if args.task == ["suite"] else args.task
    for task in tasks:
        try:
            generate_demos(task, args.num, args.out, control_mode=args.control_mode, num_procs=args.num_procs)
        except (ValueError, RuntimeError) as e:
            raise UsageError(str(e)) from None
    return 0


def _is_libero(paths) -> bool:
    from rllib_pirl.libero_demos import is_libero_file, libero_files

    try:
        return any(is_libero_file(f) for f in libero_files(paths))
    except FileNotFoundError:
        return False


def cmd_sft(args) -> int:
    import torch

    from rllib_pirl.demos import load_demos
    from rllib_pirl.sft import demo_counts, tasks_of, train_sft

    torch.set_num_threads(max(1, args.threads))
    if args.camera_size is not None and args.camera_size < 1:
        raise UsageError(f"--camera-size must be >= 1, got {args.camera_size}")
    libero = _is_libero(args.demos)
    if libero and args.model == "state":
        raise UsageError("LIBERO demos train π0 / π0.5 (cameras + 8-D robot state): add --model pi0 or --model pi05.")
    try:
        if libero:
            from rllib_pirl.libero_demos import load_libero_demos

            demos = load_libero_demos(args.demos, camera_size=args.camera_size, limit_per_task=args.num_demos)
        else:
            demos = load_demos(args.demos, limit_per_task=args.num_demos)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(str(e)) from None
    tasks = args.tasks.split(",") if args.tasks else tasks_of(demos)
    missing = [t for t in tasks if t not in demo_counts(demos)]
    if missing:
        raise UsageError(f"No demos of {missing} under {args.demos}; found {demo_counts(demos)}.")
    demos = [d for d in demos if d.task in tasks]
    command = "rllib " + " ".join(args.argv)
    if args.model in ("pi0", "pi05"):
        return _sft_pi(args, tasks, command, demos if libero else None)
    hidden = [int(h) for h in args.hidden.split(",")]
    train_sft(
        demos,
        tasks,
        args.out,
        chunk=args.chunk,
        state_dim=args.state_dim,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden_sizes=hidden,
        seed=args.seed,
        metadata={"command": command, "demo_counts": demo_counts(demos)},
    )
    return 0


def _sft_pi(args, tasks, command, demos=None) -> int:
    """π0 / π0.5 SFT: re-render ManiSkill demos with cameras (or take ``demos`` that have
    them: LIBERO's), then flow matching."""
    from rllib_pirl.demos import render_demos
    from rllib_pirl.models.pi0 import PiConfig
    from rllib_pirl.sft import demo_counts, train_pi_sft

    if not args.tokenizer and not args.pretrained:
        raise UsageError(
            f"--model {args.model} needs --tokenizer PATH (PaliGemma's SentencePiece model, or a small one for "
            "tiny models: `rllib tokenizer --out OUT.model`) or --pretrained CHECKPOINT with a tokenizer in it."
        )
    if args.tokenizer and not os.path.isfile(args.tokenizer):
        raise UsageError(f"--tokenizer {args.tokenizer}: no such file.")
    camera_size = args.camera_size
    if demos is None:
        camera_size = camera_size or 32
        demos = render_demos(args.demos, camera_size, limit_per_task=args.num_demos)
        demos = [d for d in demos if d.task in tasks]
    else:
        camera_size = camera_size or int(demos[0].images["image"].shape[1])
    if not demos:
        raise UsageError("No demo replayed successfully with cameras; nothing to train on.")
    train_pi_sft(
        demos,
        tasks,
        args.out,
        tokenizer=args.tokenizer,
        variant=args.model,
        pi_config=None if args.pretrained else PiConfig.tiny(args.model, chunk_size=args.chunk).to_dict(),
        pretrained=args.pretrained,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=max(1, min(1000, args.steps // 20)),
        metadata={"command": command, "demo_counts": demo_counts(demos), "camera_size": camera_size},
    )
    return 0


def cmd_export(args) -> int:
    """Write the model of an algorithm checkpoint as a model checkpoint (to continue from it
    with ``init_checkpoint``, evaluate it, or load it elsewhere; π0 / π0.5 in the lerobot layout)."""
    from rllib_pirl.models.checkpoint import save_model

    module, _ = load_checkpoint(args.checkpoint)
    save_model(module.model, args.out, metadata={"from": os.path.abspath(args.checkpoint)})
    print(f"[export] wrote {args.out}")
    return 0


def cmd_tokenizer(args) -> int:
    """A small SentencePiece tokenizer for the tiny π0 / π0.5 (trained on the instructions)."""
    from rllib_pirl.envs.maniskill import TASK_INSTRUCTIONS
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    sentences = sorted(TASK_INSTRUCTIONS.values()) + list(args.sentence or [])
    if args.libero:
        from rllib_pirl.envs.libero import all_instructions

        sentences += all_instructions()
    print(f"[tokenizer] wrote {train_tiny_tokenizer(args.out, sentences, args.vocab_size)}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib",
        description="rllib_pirl's command line: train πRL algorithms (Flow-SDE, Flow-Noise) from tuned-example "
        "yaml files with Ray Tune, and evaluate checkpoints.",
        epilog="examples:\n"
        "  rllib train file tuned_examples/flow_sde_point_reach.yaml\n"
        "  rllib train file tuned_examples/flow_sde_point_reach.yaml --stop '{\"training_iteration\": 5}' "
        "--storage-path /tmp/runs\n"
        "  rllib evaluate /tmp/runs/flow-sde-point-reach/<trial>/checkpoint_000000 --episodes 200\n"
        "  rllib demos --task PickCube-v1 --num 50 --out demos\n"
        "  rllib sft --demos demos --out checkpoints/pickcube_sft --num-demos 50\n"
        "'rllib train file --help' and 'rllib evaluate --help' say more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an algorithm", description="Train an algorithm.")
    train_sub = train.add_subparsers(dest="how", required=True)
    tf = train_sub.add_parser(
        "file",
        help="run the experiments of a tuned-example yaml file with Ray Tune",
        description="Run the experiments of a tuned-example yaml file {name: {env, run, stop, config, "
        "checkpoint_config}} with Ray Tune. Results, TensorBoard files and checkpoints go to "
        "STORAGE_PATH/name.",
    )
    tf.add_argument("file", help="yaml file, e.g. tuned_examples/flow_sde_point_reach.yaml")
    tf.add_argument("--stop", help="JSON stopping criteria replacing the file's, e.g. '{\"training_iteration\": 5}'")
    tf.add_argument("--storage-path", help="where Tune writes results (default ~/ray_results)")
    tf.set_defaults(func=cmd_train_file)
    ev = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint's deterministic policy",
        description="Run the deterministic (ODE) policy of a checkpoint for N episodes on fixed seeds and print "
        "the mean return and success rate with 95%% intervals.",
    )
    ev.add_argument(
        "checkpoint", help="an algorithm checkpoint (a trial's checkpoint_00000N) or a model checkpoint (rllib sft)"
    )
    ev.add_argument(
        "--episodes", type=int, help="episodes per task (default 100; LIBERO: 50, every initial state of each task)"
    )
    ev.add_argument(
        "--seed", type=int, default=0, help="episode i resets with seed SEED + i (LIBERO: initial state SEED + i)"
    )
    ev.add_argument("--explore", action="store_true", help="use the stochastic exploration policy instead")
    ev.add_argument("--env-config", help="JSON env_config (overrides the one stored in an algorithm checkpoint)")
    ev.add_argument("--env", help="env name (required for a model checkpoint from `rllib sft`)")
    ev.add_argument("--num-denoise-steps", type=int, default=4, help="K for a model checkpoint (default 4)")
    ev.add_argument("--video-dir", help="write mp4s of the first 3 episodes here (envs with camera observations)")
    ev.add_argument(
        "--workers",
        type=int,
        default=1,
        help="evaluate the tasks of a suite in this many processes at once (default 1; each loads the model)",
    )
    ev.set_defaults(func=cmd_evaluate)
    de = sub.add_parser(
        "demos",
        help="make ManiSkill expert demos (motion planning, converted to end-effector control)",
        description="Generate N successful expert demos per ManiSkill task offline with ManiSkill's motion-planning "
        "solutions, converted by ManiSkill's replay tool to end-effector control (pd_ee_delta_pos by default) with "
        "state observations "
        "(ManiSkill's .h5/.json trajectory format, under OUT/TASK/motionplanning/).",
    )
    de.add_argument("--task", action="append", required=True, help="task id (repeatable), or 'suite'")
    de.add_argument("--num", type=int, default=50, help="successful demos per task (default 50)")
    de.add_argument("--out", default="demos", help="output folder (default demos/)")
    de.add_argument("--num-procs", type=int, default=2, help="motion-planning processes (default 2)")
    de.add_argument(
        "--control-mode",
        default="pd_ee_delta_pos",
        help="controller the demos are converted to (= env_config.control_mode); pd_ee_delta_pos cannot rotate "
        "the gripper: tasks that need it (LiftPegUpright) need pd_ee_delta_pose",
    )
    de.set_defaults(func=cmd_demos)
    sf = sub.add_parser(
        "sft",
        help="few-shot SFT: flow-matching behaviour cloning on demos",
        description="Train a flow policy by flow matching on demos and write a model checkpoint folder that a "
        "yaml names as the RL starting point (model_config: {init_checkpoint: OUT}): the state MLP policy, or "
        "(--model pi0 / pi05) π0 / π0.5 on the demos re-rendered with the env's cameras, or on LIBERO's "
        "demo files (*_demo.hdf5) with their own cameras.",
    )
    sf.add_argument(
        "--demos",
        nargs="+",
        required=True,
        help="demo .h5 files or folders (from `rllib demos`), or LIBERO demo .hdf5 files / folders",
    )
    sf.add_argument("--out", required=True, help="checkpoint folder to write")
    sf.add_argument("--tasks", help="comma-separated task order (= the env's tasks); default: the demos' tasks")
    sf.add_argument("--num-demos", type=int, help="use at most this many demos per task")
    sf.add_argument("--chunk", type=int, default=5, help="action chunk H (default 5)")
    sf.add_argument("--state-dim", type=int, help="pad states to this size (the env's, for suites)")
    sf.add_argument("--steps", type=int, default=20000, help="gradient steps (default 20000)")
    sf.add_argument("--batch-size", type=int, default=256)
    sf.add_argument("--lr", type=float, default=3e-4)
    sf.add_argument("--hidden", default="256,256,256", help="velocity MLP widths (default 256,256,256)")
    sf.add_argument("--seed", type=int, default=0)
    sf.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    sf.add_argument(
        "--model",
        default="state",
        choices=["state", "pi0", "pi05"],
        help="state: the MLP state flow policy; pi0 / pi05: a π0 / π0.5 on the demos re-rendered with cameras "
        "(tiny CPU size unless --pretrained), written in the lerobot layout",
    )
    sf.add_argument("--tokenizer", help="π0 / π0.5: SentencePiece tokenizer file")
    sf.add_argument("--pretrained", help="π0 / π0.5: start from this lerobot / openpi checkpoint")
    sf.add_argument(
        "--camera-size",
        type=int,
        help="π0 / π0.5: camera resolution in px (= env_config; ManiSkill default 32, LIBERO default: the files')",
    )
    sf.set_defaults(func=cmd_sft)
    ex = sub.add_parser(
        "export",
        help="write the model of an algorithm checkpoint as a model checkpoint",
        description="Write the model of an algorithm checkpoint (a trial's checkpoint_00000N) as a model "
        "checkpoint folder: RL continues from it with model_config: {init_checkpoint: OUT}; π0 / π0.5 are "
        "written in the lerobot layout.",
    )
    ex.add_argument("checkpoint", help="an algorithm checkpoint folder")
    ex.add_argument("--out", required=True, help="the model checkpoint folder to write")
    ex.set_defaults(func=cmd_export)
    tk = sub.add_parser(
        "tokenizer",
        help="train a small SentencePiece tokenizer for tiny π0 / π0.5 models",
        description="Train a small SentencePiece tokenizer (byte fallback, digits, the ManiSkill instructions and "
        "any --sentence) for the tiny CPU π0 / π0.5 models. Real checkpoints need PaliGemma's own tokenizer.",
    )
    tk.add_argument("--out", required=True, help="the .model file to write")
    tk.add_argument("--sentence", action="append", help="extra training sentence (repeatable)")
    tk.add_argument("--vocab-size", type=int, default=400, help="at most the model's vocabulary (default 400)")
    tk.add_argument(
        "--libero", action="store_true", help="also train on the instructions of all LIBERO suites (needs LIBERO)"
    )
    tk.set_defaults(func=cmd_tokenizer)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv  # the command line, recorded in checkpoints
    try:
        return args.func(args)
    except UsageError as e:
        print(f"rllib: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
