"""Configuration shared by Flow-SDE and Flow-Noise (a PPOConfig with the πRL fields)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override
from ray.rllib.utils.from_config import NotProvided

from rllib_pirl.callbacks import SuccessRateCallback
from rllib_pirl.flow import LOGPROB_REDUCTIONS
from rllib_pirl.rl_module import INFERENCE_X0

#: The πRL fields, their defaults (the paper's π0-ManiSkill Flow-Noise settings where
#: it has one) and what they mean. Documented again in README.md.
FLOW_FIELDS: dict[str, Any] = {
    "num_denoise_steps": 4,  # K: denoising steps per action chunk
    "noise_level": 0.5,  # Flow-SDE noise level a (σ_t = a·sqrt(t/(1−t)))
    "noise_std_range": (0.08, 0.16),  # Flow-Noise: bounds of the learned std
    "action_chunk": 5,  # actions per policy step (the env executes the chunk)
    "logprob_reduction": "sum",  # "sum": one ratio per chunk; "per_element"
    "value_lr": 1.55e-4,  # learning rate of the value head (actor: `lr`)
    "weight_decay": 0.0,  # AdamW weight decay of both optimizers
    "vf_huber_delta": 10.0,  # Huber δ of the value loss
    "value_clip_param": 0.2,  # value clipping around the rollout's value
    "inference_x0": "zeros",  # deterministic policy starts from "zeros" or "noise"
    "exploration_x0": "noise",  # exploration chains start from "noise" (the paper) or "zeros"
}


class FlowPPOConfig(PPOConfig):
    """PPO on the denoising chain of a flow policy. Use :class:`FlowSDEConfig` or
    :class:`FlowNoiseConfig`; they differ only in ``flow_exploration``."""

    #: "sde" (Flow-SDE) or "noise" (Flow-Noise); fixed by the subclass.
    flow_exploration: str = "sde"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        for key, value in FLOW_FIELDS.items():
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

    @override(PPOConfig)
    def training(
        self,
        *,
        num_denoise_steps: int | None = NotProvided,
        noise_level: float | None = NotProvided,
        noise_std_range: Sequence[float] | None = NotProvided,
        action_chunk: int | None = NotProvided,
        logprob_reduction: str | None = NotProvided,
        value_lr: float | None = NotProvided,
        weight_decay: float | None = NotProvided,
        vf_huber_delta: float | None = NotProvided,
        value_clip_param: float | None = NotProvided,
        inference_x0: str | None = NotProvided,
        exploration_x0: str | None = NotProvided,
        **kwargs,
    ) -> FlowPPOConfig:
        """PPO's ``training()`` plus the πRL fields (see ``FLOW_FIELDS``)."""
        super().training(**kwargs)
        given = {
            "num_denoise_steps": num_denoise_steps,
            "noise_level": noise_level,
            "noise_std_range": noise_std_range,
            "action_chunk": action_chunk,
            "logprob_reduction": logprob_reduction,
            "value_lr": value_lr,
            "weight_decay": weight_decay,
            "vf_huber_delta": vf_huber_delta,
            "value_clip_param": value_clip_param,
            "inference_x0": inference_x0,
            "exploration_x0": exploration_x0,
        }
        for key, value in given.items():
            if value is not NotProvided:
                setattr(self, key, value)
        return self

    @override(PPOConfig)
    def validate(self) -> None:
        super().validate()
        for message in flow_config_errors(self):
            self._value_error(message)
        from rllib_pirl.envs import ENV_INSTRUCTIONS, VECTOR_ENVS

        if self.env in ENV_INSTRUCTIONS and "instructions" not in self._model_config and not self._is_frozen:
            # Models with a prompt (π0 / π0.5) tokenise the instruction of each task_id.
            self._model_config = dict(self._model_config, instructions=ENV_INSTRUCTIONS[self.env](self.env_config))

        if self.env in VECTOR_ENVS and self.gym_env_vectorize_mode != "vector_entry_point" and not self._is_frozen:
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
        return super()._model_config_auto_includes | {
            "num_denoise_steps": self.num_denoise_steps,
            "noise_level": self.noise_level,
            "noise_std_range": tuple(self.noise_std_range),
            "action_chunk": self.action_chunk,
            "logprob_reduction": self.logprob_reduction,
            "inference_x0": self.inference_x0,
            "exploration_x0": self.exploration_x0,
            "exploration": self.flow_exploration,
        }


def flow_config_errors(config) -> list:
    """Messages for every invalid πRL field of ``config`` (empty when all are valid)."""
    errors = []
    k = config.num_denoise_steps
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        errors.append(f"num_denoise_steps (K) must be an integer >= 1, got {k!r}.")
    if not isinstance(config.noise_level, (int, float)) or config.noise_level < 0:
        errors.append(f"noise_level must be a number >= 0 (0 = the ODE), got {config.noise_level!r}.")
    rng = config.noise_std_range
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)):
        errors.append(f"noise_std_range must be [min, max], got {rng!r}.")
    elif not 0 < rng[0] <= rng[1]:
        errors.append(f"noise_std_range must satisfy 0 < min <= max, got min={rng[0]}, max={rng[1]}.")
    c = config.action_chunk
    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
        errors.append(f"action_chunk must be an integer >= 1, got {c!r}.")
    if config.logprob_reduction not in LOGPROB_REDUCTIONS:
        errors.append(f"logprob_reduction must be one of {LOGPROB_REDUCTIONS}, got {config.logprob_reduction!r}.")
    for name in ("inference_x0", "exploration_x0"):
        if getattr(config, name) not in INFERENCE_X0:
            errors.append(f"{name} must be one of {INFERENCE_X0}, got {getattr(config, name)!r}.")
    for name in ("vf_huber_delta", "value_clip_param"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or value <= 0:
            errors.append(f"{name} must be a number > 0, got {value!r}.")
    for name in ("value_lr", "weight_decay"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or value < 0:
            errors.append(f"{name} must be a number >= 0, got {value!r}.")
    return errors


class FlowSDEConfig(FlowPPOConfig):
    """Flow-SDE: the ODE turned into an SDE; one random denoising step per rollout
    call is stochastic (noise level a = ``noise_level``); entropy bonus 0."""

    flow_exploration = "sde"

    def __init__(self, algo_class=None):
        from rllib_pirl.algorithms.algorithm import FlowSDE

        super().__init__(algo_class=algo_class or FlowSDE)


class FlowNoiseConfig(FlowPPOConfig):
    """Flow-Noise: a learned noise head makes every denoising step Gaussian; the
    likelihood of the whole chain is exact; entropy bonus 0.005."""

    flow_exploration = "noise"

    def __init__(self, algo_class=None):
        from rllib_pirl.algorithms.algorithm import FlowNoise

        super().__init__(algo_class=algo_class or FlowNoise)
        self.entropy_coeff = 0.005
