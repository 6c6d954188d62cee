"""Evaluation: the deterministic (ODE) policy of a checkpoint on fixed seeds.

- :func:`evaluate_checkpoint` — the whole job behind ``rllib evaluate``: an algorithm or a
  model checkpoint, on its env (or another), every task of a suite one env at a time
  (optionally in worker processes), with 95% intervals;
- :func:`evaluate` — the protocol for a module and an env: episode i resets with seed
  ``seed + i`` (or initial state ``seed + i`` for envs with fixed initial states);
- :func:`load_algorithm_checkpoint`, :func:`module_for_model` — a policy from either kind
  of checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

from rllib_pirl.settings import X0_CHOICES


def env_creator_for(env) -> Callable[[dict], gym.Env]:
    """The creator of a Tune-registered env name, or ``gymnasium.make`` for an id."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if isinstance(env, str) and _global_registry.contains(ENV_CREATOR, env):
        return _global_registry.get(ENV_CREATOR, env)
    if isinstance(env, str) and env in gym.registry:
        return lambda config: gym.make(env, **(config or {}))
    if callable(env):
        return env
    raise ValueError(f"Unknown env {env!r}: neither registered with Ray Tune nor a gymnasium id.")


def evaluation_env_makers(env, env_config: dict) -> list[Callable[[], gym.Env]]:
    """Makers of the envs an evaluation runs on, one at a time: one per task for envs
    evaluated task by task (a ManiSkill suite, LIBERO), else the one env of ``env_config``."""
    from rllib_pirl.envs import ENVS

    entry = ENVS.get(env) if isinstance(env, str) else None
    if entry is not None and entry.task_makers is not None:
        return entry.task_makers(env_config)
    return [functools.partial(env_creator_for(env), env_config)]


def wilson_interval(successes: int, n: int, z: float = 1.96):
    """95% Wilson score interval of a success rate p = successes / n:
    ``(p + z²/2n ± z·sqrt(p(1 − p)/n + z²/4n²)) / (1 + z²/n)``. Its lower end is 0 at p = 0 and
    its upper end 1 at p = 1 (exactly: the floating-point formula gives 0.9999999999999999,
    below the rate itself)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half)


@dataclass
class EvalResult:
    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # info["task"] of each episode, when the env reports it
    #: (name, frames) of recorded episodes (``evaluate(..., keep_videos=True)``)
    videos: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_ci95(self):
        """Normal-approximation 95% interval of the mean return."""
        n = len(self.returns)
        half = 1.96 * float(np.std(self.returns, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        return (self.mean_return - half, self.mean_return + half)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))

    @property
    def success_ci95(self):
        return wilson_interval(int(np.sum(self.successes)), len(self.successes))

    def extend(self, other: EvalResult) -> EvalResult:
        """Append the episodes of ``other`` (e.g. another task's)."""
        for name in ("returns", "successes", "lengths", "tasks", "videos"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def per_task(self):
        """{task: (episodes, success rate, 95% interval)} when the env reports tasks."""
        out = {}
        for task in sorted({t for t in self.tasks if t}):
            wins = [s for s, t in zip(self.successes, self.tasks) if t == task]
            out[task] = (len(wins), float(np.mean(wins)), wilson_interval(int(np.sum(wins)), len(wins)))
        return out

    def summary(self) -> str:
        lo, hi = self.return_ci95
        slo, shi = self.success_ci95
        lines = [
            f"episodes: {len(self.returns)}",
            f"mean return: {self.mean_return:.4f}  (95% CI {lo:.4f} .. {hi:.4f})",
            f"success rate: {self.success_rate:.4f}  (95% CI {slo:.4f} .. {shi:.4f})",
            f"mean episode length: {np.mean(self.lengths):.1f} policy steps",
        ]
        per_task = self.per_task()
        if len(per_task) > 1:
            for task, (n, rate, (tlo, thi)) in per_task.items():
                lines.append(f"  {task}: success {rate:.4f}  (95% CI {tlo:.4f} .. {thi:.4f}, {n} episodes)")
        return "\n".join(lines)


def _camera_frame(obs):
    """The camera images of an observation ((H, W, 3) uint8 entries) side by side, in
    key order (None without cameras)."""
    if not isinstance(obs, dict):
        return None
    images = [np.asarray(v) for _, v in sorted(obs.items()) if np.asarray(v).dtype == np.uint8 and np.ndim(v) == 3]
    return np.concatenate(images, axis=1) if images else None


def _write_video(frames, folder: str, name: str, fps: int = 5) -> None:
    import imageio

    os.makedirs(folder, exist_ok=True)
    imageio.mimsave(os.path.join(folder, name), frames, fps=fps, macro_block_size=1)


def _batch_of_one(obs):
    """An observation (array or dict of arrays) as a batch of one, in torch."""
    if isinstance(obs, dict):
        return {k: _batch_of_one(v) for k, v in obs.items()}
    return torch.as_tensor(np.asarray(obs)[None])


@torch.no_grad()
def evaluate(
    module,
    env: gym.Env,
    episodes: int,
    seed: int = 0,
    explore: bool = False,
    normalize_actions: bool = True,
    clip_actions: bool = False,
    progress=None,
    video_dir: str | None = None,
    video_episodes: int = 3,
    keep_videos: bool = False,
) -> EvalResult:
    """Run ``episodes`` episodes, episode i reset with seed ``seed + i``.

    Deterministic policy (``forward_inference``, from the module's ``inference_x0``: zeros, or
    noise) unless ``explore``; the exploration noise of episode i, and the noise x_0 of a
    deterministic policy from noise, are drawn from torch seeded with ``seed + i`` (the caller's
    random state is kept), so a stochastic evaluation repeats like a deterministic one. Actions go to the
    env as RLlib's env runners send them (``normalize_actions``: [−1, 1] → bounds;
    ``clip_actions``). An episode succeeds when any step's ``info["success"]`` is true
    (the reset's does not count: no episode succeeds before its first action).
    With ``video_dir`` and camera observations ((H, W, 3) uint8 entries), the first
    ``video_episodes`` episodes are written there as mp4 (the cameras side by side,
    one frame per policy step); with ``keep_videos`` their frames are kept in the result.
    """
    result = EvalResult()
    seeded = explore or getattr(module, "inference_x0", "zeros") == "noise"
    for i in range(episodes):
        with _seeded_noise(module, seed + i) if seeded else contextlib.nullcontext():
            obs, _ = env.reset(seed=seed + i)
            total, success, steps, done = 0.0, False, 0, False  # no success before the first action
            record = (video_dir or keep_videos) and i < video_episodes and _camera_frame(obs) is not None
            frames = [] if record else None
            while not done:
                if frames is not None:
                    frames.append(_camera_frame(obs))
                batch = {Columns.OBS: _batch_of_one(obs)}
                out = module.forward_exploration(batch) if explore else module.forward_inference(batch)
                action = out[Columns.ACTIONS][0].cpu().numpy()
                if normalize_actions:
                    action = unsquash_action(action, env.action_space)
                elif clip_actions:
                    action = clip_action(action, env.action_space)
                obs, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                success = success or bool(info.get("success", False))
                steps += 1
                done = terminated or truncated
        result.returns.append(total)
        result.successes.append(success)
        result.lengths.append(steps)
        result.tasks.append(info.get("task", ""))
        if frames:
            frames.append(_camera_frame(obs))
            task = f"{info['task']}_" if info.get("task") else ""
            name = f"{task}episode_{seed + i}_{'success' if success else 'failure'}"
            if video_dir:
                _write_video(frames, video_dir, name + ".mp4")
            if keep_videos:
                result.videos.append((name, frames))
        if progress is not None:
            progress(i + 1, result)
    return result


@contextlib.contextmanager
def _seeded_noise(module, seed: int):
    """torch draws from ``seed`` inside (on the module's device too); the caller's random
    state is restored afterwards."""
    device = next(module.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# -- during training ------------------------------------------------------------------------
def evaluate_during_training(algorithm, eval_env_runner_group=None):
    """RLlib's ``custom_evaluation_function`` of the πRL algorithms (``evaluation_interval``):
    what ``rllib evaluate`` does, on the current weights — the deterministic policy,
    ``evaluation_duration`` episodes per task on the fixed seeds ``evaluation_seed + i`` (the
    same episodes in every round, so rounds compare), one env at a time. Returns RLlib's
    ``(metrics, env_steps, agent_steps)``; the metrics land under ``evaluation/`` in the
    results (``evaluation/env_runners/success_rate``, its 95% interval, the mean return).
    The first ``evaluation_videos`` episodes of camera envs go to the trial's TensorBoard
    files as animated images (tag ``evaluation/<episode>``)."""
    config = algorithm.config
    module = algorithm.get_module()
    result = EvalResult()
    for make_env in evaluation_env_makers(config.env, config.env_config):
        env = make_env()
        try:
            result.extend(
                evaluate(
                    module,
                    env,
                    config.evaluation_duration,
                    seed=config.evaluation_seed,
                    normalize_actions=config.normalize_actions,
                    clip_actions=config.clip_actions,
                    video_episodes=config.evaluation_videos,
                    keep_videos=config.evaluation_videos > 0,
                )
            )
        finally:
            env.close()
    lo, hi = result.success_ci95
    runners = {
        "episode_return_mean": result.mean_return,
        "episode_len_mean": float(np.mean(result.lengths)),
        "num_episodes": len(result.returns),
        "success_rate": result.success_rate,
        "success_rate_ci95_lo": lo,
        "success_rate_ci95_hi": hi,
    }
    for task, (_, rate, _) in result.per_task().items():
        runners[f"success_rate_{task}"] = rate
    if result.videos and getattr(algorithm, "logdir", None):
        write_tensorboard_videos(algorithm.logdir, result.videos, step=algorithm.iteration + 1)
    # RLlib's new stack reads evaluation results from the algorithm's metrics (merged the way
    # its evaluation env runners' metrics are), not from what this function returns.
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EVALUATION_RESULTS
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    logger = MetricsLogger()
    for key, value in runners.items():
        logger.log_value(key, value, window=1)
    algorithm.metrics.aggregate([logger.reduce()], key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS))
    steps = int(np.sum(result.lengths))
    return {ENV_RUNNER_RESULTS: runners}, steps, steps


def write_tensorboard_videos(logdir: str, videos, step: int, fps: int = 5) -> None:
    """Episodes as animated GIF images in a TensorBoard event file in ``logdir`` (what
    TensorBoard's Images tab plays; tensorboardX's ``add_video`` does the same through
    moviepy, which this avoids): tag ``evaluation/<name>`` without the seed and outcome, so
    that the rounds of one episode slot line up on the step slider."""
    import imageio.v3 as iio
    from tensorboardX import SummaryWriter
    from tensorboardX.proto.summary_pb2 import Summary

    writer = SummaryWriter(logdir, filename_suffix=".evaluation_videos")
    try:
        for slot, (name, frames) in enumerate(videos):
            frames = np.stack(frames)
            gif = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)
            height, width = frames.shape[1:3]
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
            tag = f"evaluation/episode_{slot}"
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
            writer.add_text(f"{tag}/name", name, step)
    finally:
        writer.close()


# -- policies from checkpoints ------------------------------------------------------------
def load_algorithm_checkpoint(path: str):
    """``(module, algorithm config dict)`` from an RLlib algorithm checkpoint folder (a
    trial's ``checkpoint_00000N``), without building the algorithm's env runners."""
    import pickle

    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
    from ray.rllib.core.rl_module.rl_module import RLModule
    from ray.rllib.utils.checkpoints import Checkpointable

    from rllib_pirl.algorithms import register
    from rllib_pirl.errors import UsageError

    register()
    path = os.path.abspath(os.path.expanduser(path))
    module_dir = os.path.join(path, COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID)
    ctor = os.path.join(path, Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME)
    if not (os.path.isdir(module_dir) and os.path.isfile(ctor)):
        raise UsageError(
            f"{path} is neither an RLlib algorithm checkpoint (expected {os.path.relpath(module_dir, path)}/ and "
            f"{Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME}; pass a trial's checkpoint_00000N folder) nor a model "
            "checkpoint (config.json and model.safetensors, from `rllib sft` or `rllib export`)."
        )
    with open(ctor, "rb") as f:  # what Algorithm.from_checkpoint reads: the algorithm's config
        config = pickle.load(f)["ctor_args_and_kwargs"][0][0]
    module = RLModule.from_checkpoint(module_dir)
    module.eval()
    # The exploration noise the run had reached (its schedules at the env steps it had sampled),
    # not the schedules' start that a fresh module takes.
    steps = sampled_env_steps(path)
    module.set_exploration_noise(*module.settings.noise_at(steps))
    return module, config


def sampled_env_steps(path: str) -> float:
    """The env steps an algorithm checkpoint's run had sampled when it was saved (the
    counter the noise schedules follow), from the checkpoint's own state file."""
    import pickle

    from ray.rllib.utils.checkpoints import get_checkpoint_info, try_import_msgpack
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from rllib_pirl.algorithms.flow_ppo import schedule_steps

    info = get_checkpoint_info(path)  # algorithm_state.pkl, or .msgpack
    with open(info["state_file"], "rb") as f:
        if info["format"] == "msgpack":
            state = try_import_msgpack(error=True).load(f, strict_map_key=False)
        else:
            state = pickle.load(f)
    metrics = MetricsLogger()
    metrics.set_state(state.get("metrics_logger", {}))
    return schedule_steps(metrics)


def module_for_model(path: str, env: gym.Env, num_denoise_steps: int, instructions=None):
    """A FlowRLModule around a model checkpoint (from ``rllib sft`` / ``rllib export``) for
    ``env``'s spaces, with the table's defaults for every setting but K;
    ``instructions``: the env's, one per ``task_id`` (they replace the checkpoint's prompts,
    whose task order is the SFT's)."""
    from rllib_pirl.rl_module import FlowRLModule

    model_config = {"init_checkpoint": path, "num_denoise_steps": num_denoise_steps}
    if instructions is not None:
        model_config["instructions"] = list(instructions)
    module = FlowRLModule(
        observation_space=env.observation_space, action_space=env.action_space, model_config=model_config
    )
    module.eval()
    return module


# -- the evaluation job -------------------------------------------------------------------
@dataclass
class TaskEvaluation:
    """One task's share of :func:`evaluate_checkpoint`: picklable, so that a worker process
    can run it (it then loads the policy itself)."""

    checkpoint: str
    is_model_checkpoint: bool
    env_name: str
    make_env: Callable[[], gym.Env]
    episodes: int
    seed: int = 0
    explore: bool = False
    num_denoise_steps: int = 4  # model checkpoints only
    x0: str | None = None  # the deterministic policy's start ("zeros" / "noise"; None: the checkpoint's)
    instructions: list[str] | None = None  # model checkpoints on envs with task ids
    normalize_actions: bool = True
    clip_actions: bool = False
    video_dir: str | None = None
    label: str = " "  # prefix of the progress lines
    verbose: bool = True

    def run(self, module=None):
        """``(EvalResult, module)``: the task's env made here and closed; ``module`` loaded
        from the checkpoint when not given."""
        from rllib_pirl.errors import UsageError

        every = max(1, self.episodes // 10)

        def progress(i, partial):
            if self.verbose and (i % every == 0 or i == self.episodes):
                print(
                    f"{self.label} {i}/{self.episodes} episodes, mean return {partial.mean_return:.3f}, "
                    f"success {partial.success_rate:.3f}",
                    flush=True,
                )

        env = self.make_env()
        try:
            if module is None and self.is_model_checkpoint:
                try:
                    module = module_for_model(self.checkpoint, env, self.num_denoise_steps, self.instructions)
                except ValueError as e:  # the checkpoint does not fit the env
                    raise UsageError(f"{self.checkpoint} does not fit env {self.env_name}: {e}") from None
            elif module is None:
                module = load_algorithm_checkpoint(self.checkpoint)[0]
            if self.x0 is not None:
                module.inference_x0 = self.x0
            result = evaluate(
                module,
                env,
                self.episodes,
                seed=self.seed,
                explore=self.explore,
                normalize_actions=self.normalize_actions,
                clip_actions=self.clip_actions,
                progress=progress,
                video_dir=self.video_dir,
            )
            return result, module
        finally:
            env.close()


def _run_in_worker(task: TaskEvaluation) -> EvalResult:
    """:meth:`TaskEvaluation.run` in a worker process of ``evaluate_checkpoint(workers=N)``."""
    torch.set_num_threads(1)
    from rllib_pirl.algorithms import register

    register()
    return task.run()[0]


def evaluate_checkpoint(
    checkpoint: str,
    *,
    env: str | None = None,
    env_config: dict | None = None,
    episodes: int | None = None,
    seed: int = 0,
    explore: bool = False,
    num_denoise_steps: int = 4,
    x0: str | None = None,
    video_dir: str | None = None,
    workers: int = 1,
    verbose: bool = True,
) -> EvalResult:
    """Evaluate a checkpoint's deterministic (ODE) policy, or with ``explore`` its
    stochastic exploration policy (an algorithm checkpoint's at the noise its schedules had
    reached; a model checkpoint's at the table's defaults), on fixed seeds; every task of a
    suite, one env at a time.

    ``checkpoint``: an algorithm checkpoint (a trial's ``checkpoint_00000N``; its env and
    env_config are the defaults) or a model checkpoint (``rllib sft`` / ``rllib export``; needs
    ``env``, with its own instructions by task id, and uses ``num_denoise_steps``). ``x0``: where
    the deterministic policy's chain starts, ``zeros`` (the RL policy's) or ``noise`` (x_0 ~ N(0, I),
    as openpi and lerobot evaluate; drawn from episode i's seed, so a rerun repeats it); None: the
    checkpoint's ``inference_x0``.
    ``env_config`` overrides the checkpoint's keys. ``episodes`` per task, episode i reset with
    seed ``seed + i``: default 100; on envs with fixed initial states (LIBERO's 50 per task)
    episode i starts from initial state ``seed + i``, and the default is all of them.
    ``workers``: worker processes (each loads the policy) that evaluate the tasks at once,
    and split each task's seeds when there are more workers than tasks (the same seeds; on
    ManiSkill an episode after one that ended in a grasp differs slightly from the same seed
    in a fresh process: PhysX keeps something of the grasp outside its state dict).
    ``video_dir``: mp4s of the first 3 episodes of each task (camera observations).
    Bad input raises :class:`~rllib_pirl.errors.UsageError` before any episode runs.
    """
    from rllib_pirl.algorithms import register
    from rllib_pirl.envs import ENVS
    from rllib_pirl.errors import UsageError
    from rllib_pirl.models.checkpoint import is_model_checkpoint

    register()
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}.")
    if x0 not in (None, *X0_CHOICES):
        raise UsageError(f"x0 must be one of {X0_CHOICES}, got {x0!r}.")
    overrides = dict(env_config or {})
    model_checkpoint = is_model_checkpoint(checkpoint)
    module = None  # a model checkpoint's is built from the first env's spaces
    if model_checkpoint:
        if not env:
            raise UsageError("A model checkpoint needs an env (and usually an env_config) to evaluate on.")
        from rllib_pirl.experiments import check_env

        check_env(env)
        config = {"env": env, "env_config": overrides}
    else:
        module, config = load_algorithm_checkpoint(checkpoint)
    env_name = env or config["env"]
    env_config = dict(config.get("env_config") or {}, **overrides)
    entry = ENVS.get(env_name) if isinstance(env_name, str) else None
    # A model checkpoint gets the env's instructions by task_id (its own follow the SFT's task
    # order); an algorithm checkpoint's module already has its env's.
    instructions = entry.instructions(dict(env_config)) if model_checkpoint and entry and entry.instructions else None
    limit = entry.initial_states(dict(env_config)) if entry and entry.initial_states else None
    if limit is not None:  # each task's fixed initial states, in order (LIBERO's protocol)
        episodes = limit - seed if episodes is None else episodes
        if seed < 0 or seed + episodes > limit:
            raise UsageError(
                f"{env_name} episodes are the tasks' {limit} fixed initial states (episode i = initial state "
                f"seed + i): seed {seed} and {episodes} episodes asks for states {seed}..{seed + episodes - 1}, "
                f"outside 0..{limit - 1}. The standard protocol is {limit} episodes from seed 0 (the default)."
            )
    episodes = 100 if episodes is None else episodes
    if episodes < 1:
        raise UsageError(f"episodes must be >= 1, got {episodes}.")
    makers = evaluation_env_makers(env_name, env_config)
    if verbose:
        per_task = f" per task ({len(makers)} tasks)" if len(makers) > 1 else ""
        start = "" if explore else f" from x0 {x0 or (module.inference_x0 if module is not None else 'zeros')}"
        steps = f", K = {module.num_denoise_steps if module is not None else num_denoise_steps}"
        print(
            f"Evaluating {checkpoint} on {env_name} ({'stochastic' if explore else 'deterministic'} policy{start}{steps}, "
            f"{'initial states' if limit is not None else 'seeds'} {seed}..{seed + episodes - 1}{per_task})",
            flush=True,
        )
    tasks = [
        TaskEvaluation(
            checkpoint=checkpoint,
            is_model_checkpoint=model_checkpoint,
            env_name=env_name,
            make_env=make,
            episodes=episodes,
            seed=seed,
            explore=explore,
            num_denoise_steps=num_denoise_steps,
            x0=x0,
            instructions=instructions,
            normalize_actions=config.get("normalize_actions", True),
            clip_actions=config.get("clip_actions", False),
            video_dir=video_dir,
            label=f"  task {index + 1}/{len(makers)}:" if len(makers) > 1 else " ",
            verbose=verbose,
        )
        for index, make in enumerate(makers)
    ]
    result = EvalResult()
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        shares = [share for task in tasks for share in _seed_shares(task, max(1, workers // len(tasks)))]
        if verbose:
            print(f"  {len(shares)} shares of episodes over {min(workers, len(shares))} worker processes", flush=True)
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(shares)), mp_context=context) as pool:
            for share_result in pool.map(_run_in_worker, shares):  # in task and seed order
                result.extend(share_result)
    else:
        for task in tasks:
            task_result, module = task.run(module)
            result.extend(task_result)
    return result


def _seed_shares(task: TaskEvaluation, n: int) -> list[TaskEvaluation]:
    """``task``'s episodes split into ``n`` runs of consecutive seeds (the first keeps the
    videos), so that their results in order are the episodes of ``task`` in order."""
    n = min(n, task.episodes)
    if n == 1:
        return [task]
    bounds = [task.episodes * k // n for k in range(n + 1)]
    return [
        dataclasses.replace(
            task,
            seed=task.seed + lo,
            episodes=hi - lo,
            video_dir=task.video_dir if k == 0 else None,
            label=f"{task.label.rstrip()} seeds {task.seed + lo}..{task.seed + hi - 1}:",
        )
        for k, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]
