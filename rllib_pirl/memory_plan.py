"""The memory plan of a π0 / π0.5 run: what one learner and one env runner hold on a GPU.

From the architecture (:class:`PiConfig`) and the run's keys, in bytes (c = 2 in bfloat16,
4 in float32; L layers; P = cameras × tokens per image + max_token_len prefix tokens; T =
chunk_size (+ π0's state token) suffix tokens; w, m, H·d, kv·d the expert's width, MLP width,
query and key/value widths)::

    learner     = weights + optimizer [+ reference] + prefix cache + max(activations, value pass)
      weights      frozen parameters × c_frozen + trainable × 4 (fp32 master weights)
                   (+ trainable × 2 in bf16: autocast's bf16 copies)
      optimizer    trainable × (4 gradient + 8 AdamW moments)
      reference    with ref_kl_coeff > 0: the trainable weights again (the frozen ones are
                   shared), trainable × (4 + 2 in bf16)
      prefix cache rows per learner × kv            (prefix_cache: device; else 0)
                   kv = 2·L·(kv·d)·P·c + P·W_vlm·c
      activations  2.2 × micro-batch × passes × L × layer  (passes: 1 for Flow-SDE's one
                   stochastic step, K for Flow-Noise)
                   layer = T·(w·(3c + 16) + 4·m·c + 3·(H·d)·c + (kv·d)·c) + 2·(P + T)·(kv·d)·c
                   is what autograd saves per expert layer and pass; 2.2 is measured (real π0,
                   bf16, CPU: saved = 1.1 × the formula, the update's peak 1.6–2.1 × saved)
      value pass   value_chunk_size × prefix temporaries (+ kv when not cached),
                   prefix temporaries = 3·P·M_vlm·c (a VLM layer's MLP, the largest)
    env runner  = weights (no optimizer) + envs × (kv + prefix temporaries)

``benchmarks/learner_memory.py`` measures these on the CPU at real size and prints them
beside the plan. The plan is an estimate (allocator slack is not in it); the check refuses
a run whose plan exceeds the GPU share it is given (``num_gpus_per_learner`` /
``num_gpus_per_env_runner`` × the GPU's memory), naming the part to shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

from rllib_pirl.models.pi0.config import PiConfig

GIB = 2**30
#: The update's peak over the saved-for-backward formula (benchmarks/learner_memory.py, CPU).
ACTIVATION_PEAK = 2.2


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _gemma_params(width: int, depth: int, mlp: int, q: int, kv: int, vocab: int = 0) -> int:
    layer = width * (q + 2 * kv) + q * width + 3 * width * mlp + 2 * width
    return depth * layer + width + vocab * width


def parameter_counts(config: PiConfig) -> dict[str, int]:
    """Parameters of the VLM (SigLIP + projector + Gemma), the expert, the projections."""
    v, lm, ex = config.vision, config.vlm, config.expert
    vision_layer = 4 * _linear(v.width, v.width) + _linear(v.width, v.mlp_dim) + _linear(v.mlp_dim, v.width)
    vision = v.depth * (vision_layer + 4 * v.width) + 3 * v.width * v.patch_size**2 + config.tokens_per_image * v.width
    vision += 3 * v.width  # patch embedding bias, final layer norm
    vlm = vision + _linear(v.width, lm.width)
    vlm += _gemma_params(lm.width, lm.depth, lm.mlp_dim, lm.num_heads * lm.head_dim, lm.num_kv_heads * lm.head_dim)
    vlm += config.vocab_size * lm.width
    expert = _gemma_params(ex.width, ex.depth, ex.mlp_dim, ex.num_heads * ex.head_dim, ex.num_kv_heads * ex.head_dim)
    if config.variant == "pi05":  # adaptive norms: dense(w → 3w) instead of a weight per norm
        expert += (2 * ex.depth + 1) * (_linear(ex.width, 3 * ex.width) - ex.width)
    projections = _linear(config.max_action_dim, ex.width) + _linear(ex.width, config.max_action_dim)
    if config.variant == "pi0":  # state_proj, action_time_mlp_in / _out
        projections += _linear(config.max_state_dim, ex.width) + _linear(2 * ex.width, ex.width)
    projections += _linear(ex.width, ex.width)  # (action_)time_mlp_out, π0.5's time_mlp_in below
    if config.variant == "pi05":
        projections += _linear(ex.width, ex.width)
    return {"vlm": vlm, "expert": expert, "projections": projections}


@dataclass(frozen=True)
class RunShape:
    """The keys of a run that size its memory."""

    dtype: str = "bfloat16"
    exploration: str = "sde"  # "sde": 1 pass with gradient per sample; "noise": K
    num_denoise_steps: int = 4
    micro_batch: int = 32  # micro_batch_size, else the minibatch
    rows_per_learner: int = 1280  # train_batch_size_per_learner (+ RLlib's bootstrap rows)
    prefix_cache: str = "device"
    value_chunk_size: int = 64
    num_envs: int = 64  # num_envs_per_env_runner
    num_cameras: int = 2
    train_expert_only: bool = True
    reference: bool = False  # ref_kl_coeff > 0: the learner keeps a copy of the trainable weights


def _sizes(config: PiConfig, run: RunShape) -> dict[str, float]:
    c = 2 if run.dtype == "bfloat16" else 4
    lm, ex = config.vlm, config.expert
    prefix = run.num_cameras * config.tokens_per_image + config.max_token_len
    suffix = config.chunk_size + (1 if config.variant == "pi0" else 0)
    kv_width, q_width = ex.num_kv_heads * ex.head_dim, ex.num_heads * ex.head_dim
    kv = 2 * lm.depth * kv_width * prefix * c + prefix * lm.width * c
    layer = suffix * (ex.width * (3 * c + 16) + 4 * ex.mlp_dim * c + 3 * q_width * c + kv_width * c)
    layer += 2 * (prefix + suffix) * kv_width * c
    temporaries = 3 * prefix * lm.mlp_dim * c
    return {"kv": kv, "layer": layer, "temporaries": temporaries}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted GiB per part of one learner and one env runner."""

    learner: dict[str, float]
    env_runner: dict[str, float]

    @property
    def learner_total(self) -> float:
        """The peak: the value pass runs before the update, not beside its activations."""
        phases = ("activations", "value pass")
        held = sum(gib for part, gib in self.learner.items() if part not in phases)
        return held + max(self.learner[p] for p in phases)

    @property
    def env_runner_total(self) -> float:
        return sum(self.env_runner.values())

    def table(self) -> str:
        rows = [f"  learner    {self.learner_total:7.1f} GiB peak of " + _parts(self.learner)]
        rows.append(f"  env runner {self.env_runner_total:7.1f} GiB = " + _parts(self.env_runner))
        return "\n".join(rows)


def _parts(parts: dict[str, float]) -> str:
    return " + ".join(f"{name} {gib:.1f}" for name, gib in parts.items())


def memory_plan(config: PiConfig, run: RunShape) -> MemoryPlan:
    """The plan (see the module docstring) in GiB."""
    counts = parameter_counts(config)
    bf16 = run.dtype == "bfloat16"
    frozen = counts["vlm"] if run.train_expert_only else 0
    trainable = sum(counts.values()) - frozen
    weights = frozen * (2 if bf16 else 4) + trainable * (4 + (2 if bf16 else 0))
    s = _sizes(config, run)
    passes = run.num_denoise_steps if run.exploration == "noise" else 1
    cache = run.rows_per_learner * s["kv"] if run.prefix_cache == "device" and run.train_expert_only else 0
    learner = {
        "weights": weights / GIB,
        "optimizer": trainable * 12 / GIB,
        **({"reference": trainable * (4 + (2 if bf16 else 0)) / GIB} if run.reference else {}),
        "prefix cache": cache / GIB,
        "activations": ACTIVATION_PEAK * run.micro_batch * passes * config.expert.depth * s["layer"] / GIB,
        "value pass": run.value_chunk_size * (s["temporaries"] + (0 if cache else s["kv"])) / GIB,
    }
    env_runner = {"weights": weights / GIB, "rollout": run.num_envs * (s["kv"] + s["temporaries"]) / GIB}
    return MemoryPlan(learner, env_runner)


#: What lowers each part of the plan, for the error message.
REMEDIES = {
    "activations": "lower micro_batch_size",
    "prefix cache": "set prefix_cache: cpu (host memory) or lower train_batch_size_per_learner",
    "value pass": "lower value_chunk_size",
    "weights": "use dtype: bfloat16",
    "optimizer": "keep train_expert_only (the default)",
    "reference": "set ref_kl_coeff: 0 (no reference policy kept) or keep train_expert_only",
    "rollout": "lower num_envs_per_env_runner",
}


def plan_errors(plan: MemoryPlan, gpu_gib: float, learner_share: float, runner_share: float) -> list[str]:
    """A message for each process whose plan exceeds its share of a ``gpu_gib`` GPU."""
    errors = []
    for who, total, parts, share, key in (
        ("learner", plan.learner_total, plan.learner, learner_share, "num_gpus_per_learner"),
        ("env runner", plan.env_runner_total, plan.env_runner, runner_share, "num_gpus_per_env_runner"),
    ):
        if not share:
            continue
        budget = share * gpu_gib
        if total > budget:
            biggest = max((p for p in parts if p in REMEDIES and parts[p] > 0), key=parts.get)
            errors.append(
                f"The memory plan of a {who} needs {total:.1f} GiB ({_parts(parts)}) but its GPU share is "
                f"{budget:.1f} GiB ({key}={share} × {gpu_gib:.1f} GiB): {total - budget:.1f} GiB too much. The "
                f"largest part is {biggest} ({parts[biggest]:.1f} GiB): {REMEDIES[biggest]}."
            )
    return errors


def architecture_of(model_config: dict) -> PiConfig | None:
    """The π0 / π0.5 architecture a run's ``model_config`` builds (``model_kwargs.pi_config``,
    else the ``pretrained`` checkpoint's, read from its weights' shapes); None for other models."""
    kwargs = model_config.get("model_kwargs") or {}
    if kwargs.get("pretrained"):  # pi_config: the parts the checkpoint does not record
        from rllib_pirl.models.pi0.layouts import read_architecture

        return read_architecture(kwargs["pretrained"], kwargs.get("pi_config"))
    if kwargs.get("pi_config") is not None:
        pc = kwargs["pi_config"]
        return pc if isinstance(pc, PiConfig) else PiConfig.from_dict(pc)
    return None


def run_shape_of(algo_config) -> RunShape:
    """The :class:`RunShape` of a (validated) FlowPPO algorithm config."""
    kwargs = algo_config.model_config.get("model_kwargs") or {}
    minibatch = algo_config.minibatch_size or algo_config.train_batch_size_per_learner
    return RunShape(
        dtype=kwargs.get("dtype", "float32"),
        exploration=algo_config.flow_exploration,
        num_denoise_steps=algo_config.num_denoise_steps,
        micro_batch=algo_config.micro_batch_size or minibatch,
        rows_per_learner=algo_config.train_batch_size_per_learner,
        prefix_cache=algo_config.prefix_cache,
        value_chunk_size=algo_config.value_chunk_size,
        num_envs=algo_config.num_envs_per_env_runner,
        num_cameras=len(kwargs["camera_keys"]) if kwargs.get("camera_keys") else 2,
        train_expert_only=kwargs.get("train_expert_only", True),
        reference=algo_config.ref_kl_coeff > 0,
    )


def check_memory_plan(algo_config, gpu_gib: float) -> tuple[MemoryPlan | None, list[str]]:
    """The plan of a run whose model is π0 / π0.5 and its errors on a ``gpu_gib`` GPU
    (``(None, [])`` for other models or runs without GPUs)."""
    learner_share = algo_config.num_gpus_per_learner
    runner_share = algo_config.num_gpus_per_env_runner
    if not (learner_share or runner_share):
        return None, []
    config = architecture_of(algo_config.model_config)
    if config is None:
        return None, []
    plan = memory_plan(config, run_shape_of(algo_config))
    return plan, plan_errors(plan, gpu_gib, learner_share, runner_share)


def plan_with_architecture(name: str, spec: dict, config: PiConfig, tokenizer: str):
    """The plan of a yaml experiment ``spec`` with ``config`` (e.g. the released π0) built in
    place of its ``pretrained`` checkpoint — to plan a run before the checkpoint is at hand:
    ``(plan, (num_gpus_per_learner, num_gpus_per_env_runner))``."""
    import copy

    from rllib_pirl.experiments import build_config, resolve_algorithm

    run_config = copy.deepcopy(spec.get("config", {}))
    kwargs = run_config["model_config"]["model_kwargs"]
    kwargs.pop("pretrained")
    kwargs.update(pi_config=config.to_dict(), tokenizer=tokenizer)
    algo_config = build_config(resolve_algorithm(spec["run"]), spec["env"], run_config, name)
    shares = algo_config.num_gpus_per_learner, algo_config.num_gpus_per_env_runner
    return memory_plan(config, run_shape_of(algo_config)), shares
