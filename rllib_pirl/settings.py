"""The πRL settings: each default once, each check once (no Ray).

Two tables, both dataclasses:

- :class:`FlowModuleSettings`: what the RLModule needs (keys of its ``model_config``; the
  algorithm config forwards them), also when a model checkpoint is evaluated without an
  algorithm config;
- :class:`FlowLearnerSettings`: what only the learner's loss and optimizers need.

The algorithm config's πRL keys are the fields of both (``FLOW_CONFIG_KEYS``), except
``exploration``, which the algorithm fixes (Flow-SDE: ``"sde"``, Flow-Noise: ``"noise"``).
Defaults are the paper's π0-ManiSkill settings where it has one. Documented in README.md.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from rllib_pirl.flow.chain import LOGPROB_REDUCTIONS

EXPLORATIONS = ("sde", "noise")
X0_CHOICES = ("zeros", "noise")
SDE_STEPS = ("one", "all")
PREFIX_CACHES = ("device", "cpu", "off")
ADVANTAGE_ESTIMATORS = ("gae", "grpo")
ADVANTAGE_NORMALIZATIONS = ("batch", "task")
DTYPES = ("float32", "bfloat16")  # model_kwargs.dtype of π0 / π0.5


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_pair(value) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2


def is_schedule(setting, value_is_pair: bool = False) -> bool:
    """Whether ``setting`` is a schedule ``[[env_steps, value], …]`` rather than one value
    (a value that is itself a pair, like ``noise_std_range``, needs ``value_is_pair``)."""
    if not isinstance(setting, list | tuple) or not setting or not all(_is_pair(p) for p in setting):
        return False
    return all(_is_pair(p[1]) for p in setting) if value_is_pair else True


def schedule_at(setting, env_steps: float, value_is_pair: bool = False):
    """The value of a setting after ``env_steps`` env steps (RLlib's lifetime count, as its
    ``lr`` schedules): a constant is itself; a schedule ``[[s_0 = 0, v_0], [s_1, v_1], …]``
    is piecewise linear between its points and constant after the last (pairs of values
    component-wise)::

        v(s) = v_i + (s − s_i)/(s_{i+1} − s_i) · (v_{i+1} − v_i)   for s_i <= s <= s_{i+1}
    """
    if not is_schedule(setting, value_is_pair):
        return setting
    steps = [float(p[0]) for p in setting]
    values = np.asarray([p[1] for p in setting], dtype=np.float64).reshape(len(setting), -1)
    value = tuple(float(np.interp(env_steps, steps, values[:, j])) for j in range(values.shape[1]))
    return value if value_is_pair else value[0]


def schedule_errors(name: str, setting, value_errors, value_is_pair: bool = False) -> list[str]:
    """Messages for an invalid value or schedule of ``name``: ``value_errors(value)`` checks
    one value (a list of messages); a schedule's env steps must start at 0 and increase."""
    if not is_schedule(setting, value_is_pair):
        return value_errors(setting)
    steps = [p[0] for p in setting]
    errors = []
    if not all(_is_number(s) for s in steps) or steps[0] != 0 or any(b <= a for a, b in itertools.pairwise(steps)):
        errors.append(
            f"{name}: a schedule's env steps must be numbers that start at 0 and increase, got {steps!r} "
            f"(format [[0, value], [env_steps, value], ...])."
        )
    for step, value in setting:
        errors += [f"{name} at env step {step}: {e}" for e in value_errors(value)]
    return errors


def _noise_level_errors(value) -> list[str]:
    if not _is_number(value) or value < 0:
        return [
            f"noise_level must be a number >= 0 (0 = the ODE) or a schedule [[0, a], [env_steps, a], ...], got {value!r}."
        ]
    return []


def _noise_std_range_errors(rng) -> list[str]:
    if not (_is_pair(rng) and all(_is_number(v) for v in rng)):
        return [
            f"noise_std_range must be [min, max] or a schedule [[0, [min, max]], [env_steps, [min, max]], ...], got {rng!r}."
        ]
    if not 0 < rng[0] <= rng[1]:
        return [f"noise_std_range must satisfy 0 < min <= max, got min={rng[0]}, max={rng[1]}."]
    return []


@dataclass(frozen=True)
class FlowModuleSettings:
    """The flow policy's settings (RLModule ``model_config`` keys)."""

    num_denoise_steps: int = 4  # K: denoising steps per action chunk
    action_chunk: int = 5  # actions per policy step (the env executes the chunk)
    #: Flow-SDE noise level a (σ_t = a·sqrt(t/(1−t))), or a schedule [[env_steps, a], …]
    noise_level: float | list = 0.5
    #: Flow-Noise: bounds of the learned std, or a schedule [[env_steps, [min, max]], …]
    noise_std_range: tuple[float, float] | list = (0.08, 0.16)
    logprob_reduction: str = "sum"  # "sum": one ratio per chunk; "per_element": one per action element
    inference_x0: str = "zeros"  # the deterministic policy starts from "zeros" or "noise"
    exploration_x0: str = "noise"  # exploration chains start from "noise" (the paper) or "zeros"
    #: Flow-SDE: "one" random denoising step per rollout call is stochastic (the paper's), or "all"
    sde_steps: str = "one"
    exploration: str = "sde"  # "sde" (Flow-SDE) or "noise" (Flow-Noise); fixed by the algorithm

    def errors(self) -> list[str]:
        """A message for every invalid value (empty when all are valid)."""
        errors = []
        if not _is_int(self.num_denoise_steps, 1):
            errors.append(f"num_denoise_steps (K) must be an integer >= 1, got {self.num_denoise_steps!r}.")
        if not _is_int(self.action_chunk, 1):
            errors.append(f"action_chunk must be an integer >= 1, got {self.action_chunk!r}.")
        errors += schedule_errors("noise_level", self.noise_level, _noise_level_errors)
        errors += schedule_errors("noise_std_range", self.noise_std_range, _noise_std_range_errors, value_is_pair=True)
        if self.logprob_reduction not in LOGPROB_REDUCTIONS:
            errors.append(f"logprob_reduction must be one of {LOGPROB_REDUCTIONS}, got {self.logprob_reduction!r}.")
        for name in ("inference_x0", "exploration_x0"):
            if getattr(self, name) not in X0_CHOICES:
                errors.append(f"{name} must be one of {X0_CHOICES}, got {getattr(self, name)!r}.")
        if self.sde_steps not in SDE_STEPS:
            errors.append(f"sde_steps must be one of {SDE_STEPS}, got {self.sde_steps!r}.")
        if self.exploration not in EXPLORATIONS:
            errors.append(f"exploration must be one of {EXPLORATIONS}, got {self.exploration!r}.")
        return errors

    def noise_at(self, env_steps: float) -> tuple[float, tuple[float, float]]:
        """The exploration noise after ``env_steps`` env steps: ``(noise_level, noise_std_range)``."""
        level = schedule_at(self.noise_level, env_steps)
        std_range = schedule_at(self.noise_std_range, env_steps, value_is_pair=True)
        return float(level), (float(std_range[0]), float(std_range[1]))

    @classmethod
    def from_model_config(cls, model_config: dict[str, Any], **defaults) -> FlowModuleSettings:
        """The settings in ``model_config`` (other keys ignored), the table's defaults (or
        ``defaults``) for the missing ones; ``ValueError`` listing every invalid value."""
        values = {f.name: model_config[f.name] for f in dataclasses.fields(cls) if f.name in model_config}
        settings = cls(**(defaults | values))
        errors = settings.errors()
        if errors:
            raise ValueError(" ".join(errors))
        return settings


@dataclass(frozen=True)
class FlowLearnerSettings:
    """The settings of the loss and optimizers (beyond PPO's own keys)."""

    value_lr: float = 1.55e-4  # learning rate of the value head (the actor's is PPO's `lr`)
    weight_decay: float = 0.0  # AdamW weight decay of both optimizers
    vf_huber_delta: float = 10.0  # Huber δ of the value loss
    value_clip_param: float = 0.2  # value clipping around the rollout's value
    #: dual-clip PPO's c > 1: where the advantage is negative the surrogate is at least c·A
    #: (None: PPO's clip only)
    dual_clip_param: float | None = None
    #: weight β of the KL to the reference policy (the run's starting weights, e.g. the SFT
    #: checkpoint) in the loss, + β·KL(π_θ ‖ π_ref) of the stochastic denoising transitions,
    #: reduced like the log-probs (per action element with ``logprob_reduction: per_element``);
    #: 0: off (no reference kept)
    ref_kl_coeff: float = 0.0
    #: KL early stopping of the actor (SB3's / Spinning Up's ``target_kl`` guard): within an
    #: update, once a minibatch's approx KL(π_old ‖ π_θ) before its step (k3, mean over the
    #: learners) exceeds this, the actor takes no more steps on that train batch (the critic does);
    #: None: off
    kl_early_stop: float | None = None
    #: None: each minibatch in one forward/backward; n: in micro-batches of n samples whose
    #: gradients accumulate into one optimizer step per minibatch (memory ∝ n; must divide it)
    micro_batch_size: int | None = None
    #: rows per forward of the learner's one no-grad pass over a train batch (V_old and GAE's
    #: values, the cached encodings): bounds that pass's memory
    value_chunk_size: int = 64
    #: where the learner keeps each sample's frozen encoding (π0's prefix KV cache) between the
    #: epochs and minibatches of an update: "device" (the learner's GPU), "cpu" (host memory,
    #: pinned when there is a GPU; copied per micro-batch) or "off" (recomputed in every forward)
    prefix_cache: str = "device"
    #: "gae" (PPO's: a value head, GAE over each episode) or "grpo" (each episode's return against
    #: those of its group, G episodes from one initial state; no value head is trained)
    advantage_estimator: str = "gae"
    group_size: int = 8  # GRPO: G, episodes per group (consecutive sub-envs of an env runner)
    #: GRPO: [lo, hi] keeps only groups whose share of successful episodes is in the band (the
    #: paper's [0.1, 0.9]); None keeps all
    grpo_success_filter: tuple[float, float] | None = None
    #: GAE at an episode's time limit (the env's truncation): True bootstraps γ·V(s_T) there
    #: (the limit an interruption: RLlib's, gymnasium's convention); False ends the return there
    #: like a termination (the step limit part of the task, the state without the time left);
    #: None: the env's rule (``EnvEntry.time_limit_is_task``: ManiSkill, LIBERO and PointReach
    #: False, gymnasium ids True). Chunks that sampling cut mid-episode bootstrap either way
    time_limit_bootstrap: bool | None = None
    #: GAE's advantages standardised over the whole train batch ("batch", PPO's) or within each
    #: task_id of it ("task": every task of a multi-task batch weighs the same in the update)
    advantage_normalization: str = "batch"

    def errors(self) -> list[str]:
        errors = []
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            errors.append(
                f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}."
            )
        if self.advantage_normalization not in ADVANTAGE_NORMALIZATIONS:
            errors.append(
                f"advantage_normalization must be one of {ADVANTAGE_NORMALIZATIONS}, got {self.advantage_normalization!r}."
            )
        elif self.advantage_normalization == "task" and self.advantage_estimator == "grpo":
            errors.append(
                "advantage_normalization: task applies to GAE's advantages; GRPO's are standardised within "
                "each group (one task) already: leave advantage_normalization at batch."
            )
        if not _is_int(self.group_size, 2):
            errors.append(f"group_size must be an integer >= 2 (episodes per GRPO group), got {self.group_size!r}.")
        band = self.grpo_success_filter
        if band is not None and not (
            _is_pair(band) and all(_is_number(v) for v in band) and 0 <= band[0] <= band[1] <= 1
        ):
            errors.append(
                f"grpo_success_filter must be null or [lo, hi] with 0 <= lo <= hi <= 1 (success rates of a group), "
                f"got {band!r}."
            )
        if self.time_limit_bootstrap is not None and not isinstance(self.time_limit_bootstrap, bool):
            errors.append(
                f"time_limit_bootstrap must be true, false or null (the env's rule), got {self.time_limit_bootstrap!r}."
            )
        if not _is_int(self.value_chunk_size, 1):
            errors.append(f"value_chunk_size must be an integer >= 1, got {self.value_chunk_size!r}.")
        if self.prefix_cache not in PREFIX_CACHES:
            errors.append(f"prefix_cache must be one of {PREFIX_CACHES}, got {self.prefix_cache!r}.")
        if self.micro_batch_size is not None and not _is_int(self.micro_batch_size, 1):
            errors.append(f"micro_batch_size must be an integer >= 1 (or null), got {self.micro_batch_size!r}.")
        stop = self.kl_early_stop
        if stop is not None and not (_is_number(stop) and stop > 0):
            errors.append(f"kl_early_stop must be null or a number > 0 (an approx KL, e.g. 0.03), got {stop!r}.")
        dual = self.dual_clip_param
        if dual is not None and not (_is_number(dual) and dual > 1):
            errors.append(f"dual_clip_param must be null or a number > 1 (dual-clip PPO's c, e.g. 3), got {dual!r}.")
        for name in ("vf_huber_delta", "value_clip_param"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                errors.append(f"{name} must be a number > 0, got {value!r}.")
        for name in ("value_lr", "weight_decay", "ref_kl_coeff"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                errors.append(f"{name} must be a number >= 0, got {value!r}.")
        return errors


#: Module settings the algorithm fixes instead of the user.
ALGORITHM_FIXED = ("exploration",)
#: The πRL keys of the algorithm config, with their defaults.
FLOW_CONFIG_KEYS: dict[str, Any] = {
    f.name: f.default
    for table in (FlowModuleSettings, FlowLearnerSettings)
    for f in dataclasses.fields(table)
    if f.name not in ALGORITHM_FIXED
}


def settings_of(table, source, **fixed):
    """An instance of ``table`` with its values read as attributes of ``source`` (e.g. an
    algorithm config); ``fixed`` values win."""
    return table(**{f.name: getattr(source, f.name) for f in dataclasses.fields(table) if f.name not in fixed}, **fixed)
