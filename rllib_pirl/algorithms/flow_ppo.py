"""Flow-SDE and Flow-Noise: PPO's training loop on the denoising chain of a flow policy.

Like RLlib's ``ppo.py``, this file holds the configs and the algorithms; the loss lives in
``learner.py``, the policy in ``rl_module.py``. The two algorithms differ only in
``flow_exploration`` (which Gaussian transitions the chain has, see ``rllib_pirl.flow``) and
Flow-Noise's entropy bonus.
"""

from __future__ import annotations

import secrets
from typing import Any

from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.core import ALL_MODULES
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.from_config import NotProvided
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from rllib_pirl.algorithms.time_limits import time_limit_rule
from rllib_pirl.callbacks import SuccessRateCallback
from rllib_pirl.env_runner import FlowEnvRunner
from rllib_pirl.settings import DTYPES, FLOW_CONFIG_KEYS, FlowLearnerSettings, FlowModuleSettings, settings_of


class FlowPPOConfig(PPOConfig):
    """PPO on the denoising chain of a flow policy. Use :class:`FlowSDEConfig` or
    :class:`FlowNoiseConfig`; they differ only in ``flow_exploration``.

    The πRL keys (``FLOW_CONFIG_KEYS``, defaults and meaning in :mod:`rllib_pirl.settings`)
    are set with :meth:`training` beside PPO's own.
    """

    #: "sde" (Flow-SDE) or "noise" (Flow-Noise); fixed by the subclass.
    flow_exploration: str = "sde"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        for key, value in FLOW_CONFIG_KEYS.items():
            setattr(self, key, value)
        # The paper's PPO: γ 0.99, λ 0.95, clip 0.2, no KL, 4 epochs.
        self.lr = 7.91e-6
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.clip_param = 0.2
        self.use_kl_loss = False
        self.kl_coeff = 0.0
        self.num_epochs = 4
        self.entropy_coeff = 0.0
        self.vf_loss_coeff = 1.0
        self.callbacks_class = SuccessRateCallback  # env_runners/success_rate
        # Periodic evaluation (RLlib's evaluation_interval): `rllib evaluate`'s fixed seeds.
        self.evaluation_seed = 100_000  # episode i of every round resets with seed evaluation_seed + i
        self.evaluation_videos = 3  # episodes of camera envs written to TensorBoard per round
        self.env_runner_cls = FlowEnvRunner  # tells multi-task envs which runner they run in

    @override(PPOConfig)
    def training(self, **kwargs) -> FlowPPOConfig:
        """PPO's ``training()`` plus the πRL keys (``num_denoise_steps``, ``noise_level``,
        ``noise_std_range``, ``action_chunk``, ``logprob_reduction``, ``inference_x0``,
        ``exploration_x0``, ``value_lr``, ``weight_decay``, ``vf_huber_delta``,
        ``value_clip_param``, ``micro_batch_size``, ``ref_kl_coeff``; see :mod:`rllib_pirl.settings`)."""
        flow = {key: kwargs.pop(key) for key in list(kwargs) if key in FLOW_CONFIG_KEYS}
        super().training(**kwargs)
        for key, value in flow.items():
            if value is not NotProvided:
                setattr(self, key, value)
        return self

    @override(PPOConfig)
    def evaluation(self, *, evaluation_seed=NotProvided, evaluation_videos=NotProvided, **kwargs) -> FlowPPOConfig:
        """RLlib's ``evaluation()`` plus the fixed-seed evaluation's keys: ``evaluation_seed``
        (episode i of every round resets with seed evaluation_seed + i) and
        ``evaluation_videos`` (episodes of camera envs per round written to TensorBoard)."""
        super().evaluation(**kwargs)
        if evaluation_seed is not NotProvided:
            self.evaluation_seed = evaluation_seed
        if evaluation_videos is not NotProvided:
            self.evaluation_videos = evaluation_videos
        return self

    def module_settings(self) -> FlowModuleSettings:
        return settings_of(FlowModuleSettings, self, exploration=self.flow_exploration)

    @override(PPOConfig)
    def validate(self) -> None:
        learners = self.num_learners or 1
        if self._train_batch_size_per_learner is None and self.train_batch_size % learners:
            self._value_error(
                f"train_batch_size={self.train_batch_size} does not split over {learners} learners: set "
                "train_batch_size_per_learner (each learner's share) or a multiple of num_learners."
            )
        super().validate()
        errors = self.module_settings().errors() + settings_of(FlowLearnerSettings, self).errors()
        if not isinstance(self.use_critic, bool):
            errors.append(
                f"use_critic must be true (a value head, GAE) or false (no value baseline: each step's "
                f"reward to go, standardised over the batch), got {self.use_critic!r}."
            )
        dtype = (self._model_config.get("model_kwargs") or {}).get("dtype", "float32")
        if dtype not in DTYPES:
            errors.append(
                f"model_kwargs.dtype must be one of {DTYPES} (bfloat16: mixed precision on GPUs), got {dtype!r}."
            )
        if errors:  # all at once, as the module reports them
            self._value_error(" ".join(errors))
        minibatch = self.minibatch_size or self.train_batch_size_per_learner
        if self.micro_batch_size is not None and minibatch % self.micro_batch_size:
            self._value_error(
                f"micro_batch_size={self.micro_batch_size} does not divide the minibatch of {minibatch} samples "
                "(minibatch_size, else train_batch_size_per_learner): choose a divisor, e.g. "
                f"{max(d for d in range(1, self.micro_batch_size + 1) if minibatch % d == 0)}."
            )
        if "init_seed" not in self._model_config and not self._is_frozen:
            # One seed for the initial weights of every process of this run (learners, env
            # runners): frozen weights that no checkpoint gives are then equal everywhere.
            seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
            self._model_config = dict(self._model_config, init_seed=seed)
        if self.evaluation_interval and self.custom_evaluation_function is None and not self._is_frozen:
            from rllib_pirl.evaluation import evaluate_during_training

            episodes = self.evaluation_duration
            if self.evaluation_duration_unit != "episodes" or not isinstance(episodes, int) or episodes < 1:
                self._value_error(
                    "evaluation_duration must be a number of episodes >= 1 (per task, on the seeds "
                    f"evaluation_seed + i), got {episodes!r} {self.evaluation_duration_unit}."
                )
            for key in ("evaluation_seed", "evaluation_videos"):
                value = getattr(self, key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    self._value_error(f"{key} must be an integer >= 0, got {value!r}.")
            self.custom_evaluation_function = evaluate_during_training
        from rllib_pirl.envs import ENVS, chunked_gym_config

        if not self._is_frozen:
            chunked = chunked_gym_config(self.env, self.env_config)
            if chunked is not None:  # a bare gymnasium id: its env executes chunks
                self.env, self.env_config = "ChunkedGym", chunked
        entry = ENVS.get(self.env) if isinstance(self.env, str) else None
        if entry is not None and not self._is_frozen:
            if entry.instructions is not None and "instructions" not in self._model_config:
                # Models with a prompt (π0 / π0.5) tokenise the instruction of each task_id.
                self._model_config = dict(self._model_config, instructions=entry.instructions(self.env_config))
            if entry.vector and self.gym_env_vectorize_mode != "vector_entry_point":
                # The env makes its own vector env (one simulator per process).
                self.gym_env_vectorize_mode = "vector_entry_point"
        chunk = self.env_config.get("action_chunk")
        if chunk is None and not self._is_frozen:
            # The env executes the chunks: it gets their length from the config.
            self.env_config = dict(self.env_config, action_chunk=self.action_chunk)
        elif chunk is not None and chunk != self.action_chunk:
            self._value_error(
                f"env_config.action_chunk={chunk} but action_chunk={self.action_chunk}: "
                "set one of them (the env gets `action_chunk` from the config when "
                "env_config has none)."
            )
        if self.advantage_normalization == "task" and entry is not None and entry.instructions is None:
            self._value_error(
                f"advantage_normalization: task standardises the advantages of each task_id, and env {self.env!r} "
                "has no task ids in its observations (multi-task envs: ManiSkill, LIBERO): use advantage_normalization: batch."
            )
        if self.advantage_estimator == "grpo" and not self._is_frozen:
            self._validate_grpo(entry)
        if entry is not None and entry.sampled_tasks is not None and not (self._is_frozen or self.in_evaluation):
            # (an evaluation config holds the evaluation env runners, none by default: the
            # fixed-seed evaluation makes its own envs, task by task)
            self._validate_task_slots(entry.sampled_tasks(self.env_config))

    def _validate_task_slots(self, tasks: list[str]) -> None:
        """Sub-env slot i of all env runners (with GRPO: pool i, ``group_size`` sub-envs) runs
        task ``i mod #tasks``: fewer slots than tasks would leave tasks that are never trained."""
        G = self.group_size if self.advantage_estimator == "grpo" else 1
        slots = self.num_envs_per_env_runner * max(1, self.num_env_runners or 0) // G
        if slots < len(tasks):
            what = f"{slots} GRPO pools of {G} sub-envs" if G > 1 else f"{slots} sub-envs"
            self._value_error(
                f"{len(tasks)} tasks to train but the env runners hold {what} (each runs one task, in turn): "
                f"{', '.join(tasks[slots:])} would never be sampled. Set num_envs_per_env_runner × "
                f"max(1, num_env_runners) to at least {len(tasks) * G} (a multiple of {len(tasks) * G} gives "
                "every task the same share)."
            )

    def _validate_grpo(self, entry) -> None:
        """GRPO's checks before anything starts; gives an env that builds its own vector env
        its ``group_size`` (the sub-envs of a group share a task)."""
        import math

        import gymnasium as gym

        G = self.group_size
        if entry is None:
            self._value_error(
                f"advantage_estimator: grpo runs on rllib_pirl's registered envs (ManiSkill, LIBERO, PointReach, "
                f"gymnasium ids), whose resets it seeds per group; got env {self.env!r}."
            )
        reason = entry.grouped_resets_error(self.env_config) if entry.grouped_resets_error else None
        if reason:
            self._value_error(reason)
        if not entry.vector and gym.VectorizeMode(self.gym_env_vectorize_mode) != gym.VectorizeMode.SYNC:
            self._value_error(
                "advantage_estimator: grpo seeds each sub-env's resets, which gymnasium's async vector env "
                "cannot: set gym_env_vectorize_mode: sync."
            )
        if self.num_envs_per_env_runner % G:
            self._value_error(
                f"num_envs_per_env_runner={self.num_envs_per_env_runner} is not a multiple of group_size={G}: a GRPO "
                f"group is {G} sub-envs of one env runner (e.g. num_envs_per_env_runner: {G * max(1, round(self.num_envs_per_env_runner / G))})."
            )
        limit = entry.max_episode_steps(self.env_config) if entry.max_episode_steps else None
        if limit is None:
            self._value_error("advantage_estimator: grpo needs episodes with a step limit (env max_episode_steps).")
        longest = G * math.ceil(limit / self.action_chunk)
        if self.total_train_batch_size < longest:
            self._value_error(
                f"The train batch ({self.total_train_batch_size} policy steps) cannot hold one whole GRPO group: "
                f"{G} episodes of up to {math.ceil(limit / self.action_chunk)} policy steps (max_episode_steps "
                f"{limit} / action_chunk {self.action_chunk}) = {longest}. Raise train_batch_size_per_learner or "
                "lower group_size."
            )
        if entry.vector:  # the env's own vector env gives a group's sub-envs one task
            self.env_config = dict(self.env_config, group_size=G)
        if (self.num_learners or 0) > 1:  # the value head gets no gradients: DDP must not wait for them
            self.torch_ddp_kwargs = {"find_unused_parameters": True, **(self.torch_ddp_kwargs or {})}

    @override(PPOConfig)
    def get_default_learner_class(self):
        from rllib_pirl.algorithms.learner import FlowPPOTorchLearner

        return FlowPPOTorchLearner

    @override(PPOConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from rllib_pirl.rl_module import FlowRLModule

        return RLModuleSpec(module_class=FlowRLModule)

    @property
    @override(PPOConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        settings = self.module_settings()
        return super()._model_config_auto_includes | vars(settings)


class FlowPPO(PPO):
    """PPO's training step with the exploration noise of the schedules: before each
    sampling round, every env runner's module gets ``noise_level`` / ``noise_std_range`` at
    the run's lifetime env steps (the count RLlib's ``lr`` schedules use); rollouts record
    the noise they used, which the learner's log-probs use (see ``FlowRLModule.exploration``).
    The values are reported under ``exploration/`` in the results. With GRPO the step is
    :meth:`_grpo_training_step`."""

    @override(PPO)
    def setup(self, config) -> None:
        super().setup(config)
        if self.config.advantage_estimator == "gae" and self.config.use_critic:
            print(f"[pirl] {time_limit_rule(self.config)[1]}", flush=True)

    @classmethod
    @override(PPO)
    def _should_create_evaluation_env_runners(cls, eval_config) -> bool:
        """The fixed-seed evaluation makes its own envs, one at a time: no evaluation env
        runners (for a simulator, a second set of processes) unless asked for."""
        from rllib_pirl.evaluation import evaluate_during_training

        if eval_config.custom_evaluation_function is evaluate_during_training:
            return eval_config.evaluation_num_env_runners > 0
        return super()._should_create_evaluation_env_runners(eval_config)

    @override(PPO)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        """RLlib's restore; then the env runners that have not sampled yet (new processes,
        seeded as at the run's start: ``rllib train --resume``, Tune's restarts and PBT's
        exploits) draw the restored iteration's seeds (:meth:`FlowEnvRunner.continue_seeds`),
        so that a continued run does not replay its first episodes and noise."""
        super().restore_from_path(path, *args, **kwargs)
        part = self.iteration
        if part:
            self.env_runner_group.foreach_env_runner(lambda runner: runner.continue_seeds(part))

    @override(PPO)
    def restore_env_runners(self, env_runner_group) -> list[int]:
        """RLlib's: restarted processes of failed env runners are synced; then each takes the
        seeds of its restart (:meth:`FlowEnvRunner.continue_seeds`: this iteration and RLlib's
        count of restored runners, which grows with every restart) instead of replaying the
        run's first episodes, as RLlib's seeding of its new process would."""
        restored = super().restore_env_runners(env_runner_group)
        if restored:
            part, restarts = self.iteration, self._counters["total_num_restored_workers"]
            env_runner_group.foreach_env_runner(
                lambda runner: runner.continue_seeds(part, restarts), remote_worker_ids=restored, local_env_runner=False
            )
        return restored

    @override(PPO)
    def training_step(self) -> None:
        """PPO's step with the noise schedule applied first. The step's timers (``timers/``
        sampling, learner update, weight sync) report this iteration's own seconds: RLlib logs
        them as moving averages with coefficient 0.01, which would hold ~99% of the first
        (warm-up) iteration's time for dozens of iterations."""
        for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, SYNCH_WORKER_WEIGHTS_TIMER):
            self.metrics.delete(TIMERS, timer, key_error=False)
        steps = schedule_steps(self.metrics)
        level, std_range = self.config.module_settings().noise_at(steps)
        self.env_runner_group.foreach_env_runner(
            lambda runner: runner.module.set_exploration_noise(level, std_range) if runner.module else None
        )
        for key, value in (("noise_level", level), ("noise_std_min", std_range[0]), ("noise_std_max", std_range[1])):
            self.metrics.log_value(("exploration", key), value, window=1)
        if self.config.advantage_estimator != "grpo":
            return super().training_step()
        return self._grpo_training_step()

    def _grpo_training_step(self) -> None:
        """PPO's step (sample, update, sync the weights) for GRPO, whose env runners return only
        the episodes of finished groups that the success filter keeps: a sampling round may
        return none (every finished group failed, or solved, all its episodes). RLlib's PPO step
        then returns before it records the round's env-runner metrics — its env steps, episodes
        and group counts would be lost to the lifetime counters that the schedules and the stop
        criteria read. Here they are recorded, and the update runs when there are episodes."""
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                max_env_steps=self.config.total_train_batch_size,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        if not episodes:
            return
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0
                    ),
                },
                num_epochs=self.config.num_epochs,
                minibatch_size=self.config.minibatch_size,
                shuffle_batch_per_epoch=self.config.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=set(learner_results[0]) - {ALL_MODULES},
                inference_only=True,
            )


def schedule_steps(metrics) -> float:
    """The counter the schedules follow: the env steps the run has sampled, from the algorithm's
    MetricsLogger (a running algorithm's, or one restored from a checkpoint's state)."""
    return float(metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


class FlowSDE(FlowPPO):
    """πRL Flow-SDE. Configure with :class:`FlowSDEConfig`."""

    @classmethod
    @override(PPO)
    def get_default_config(cls) -> FlowSDEConfig:
        return FlowSDEConfig()


class FlowNoise(FlowPPO):
    """πRL Flow-Noise. Configure with :class:`FlowNoiseConfig`."""

    @classmethod
    @override(PPO)
    def get_default_config(cls) -> FlowNoiseConfig:
        return FlowNoiseConfig()


class FlowSDEConfig(FlowPPOConfig):
    """Flow-SDE: the ODE turned into an SDE; one random denoising step per rollout
    call is stochastic (noise level a = ``noise_level``); entropy bonus 0."""

    flow_exploration = "sde"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or FlowSDE)


class FlowNoiseConfig(FlowPPOConfig):
    """Flow-Noise: a learned noise head makes every denoising step Gaussian; the
    likelihood of the whole chain is exact; entropy bonus 0.005."""

    flow_exploration = "noise"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or FlowNoise)
        self.entropy_coeff = 0.005
