"""The learner: PPO's clipped surrogate on the denoising chain's log-probs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import explained_variance

from rllib_pirl.algorithms.grpo import GroupAdvantages
from rllib_pirl.algorithms.task_advantages import TaskAdvantages
from rllib_pirl.algorithms.time_limits import EndAtTimeLimits, RecordTimeLimits, time_limit_rule
from rllib_pirl.rl_module import ENTROPY, LOGP, NOISE_STD, REF_KL, FlowRLModule, num_rows, rows_of

CLIP_FRACTION_KEY = "clip_fraction"
APPROX_KL_KEY = "approx_kl"
MEAN_ABS_LOGP_KEY = "mean_abs_logp"
NOISE_STD_KEY = "noise_std"
REF_KL_KEY = "ref_kl"  # KL(π_θ ‖ π_ref) per action element (ref_kl_coeff > 0)
ACTOR_STEPS_KEY = "actor_steps"  # the actor's optimizer steps in the iteration (kl_early_stop ends them early)


def ppo_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float, dual_clip: float | None = None
) -> torch.Tensor:
    """Clipped surrogate per sample, averaged over its N ratios:
    mean_n min(r·A, clip(r, 1−ε, 1+ε)·A), r = exp(log_ratio), log_ratio (B, N), A (B,).
    With ``dual_clip`` c (dual-clip PPO, Ye et al. 2020), where A < 0 the term is
    max(min(r·A, clip(r)·A), c·A): a ratio far above 1 on a bad action no longer pulls
    the update without bound."""
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]
    surrogate = torch.minimum(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip))
    if dual_clip is not None:
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, dual_clip * adv), surrogate)
    return surrogate.mean(dim=1)


def clipped_huber_value_loss(values, old_values, targets, delta: float, clip: float) -> torch.Tensor:
    """max(Huber_δ(V − R), Huber_δ(V_clip − R)), V_clip = V_old + clip(V − V_old, −c, c)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    huber = torch.nn.functional.huber_loss
    return torch.maximum(
        huber(values, targets, delta=delta, reduction="none"),
        huber(clipped, targets, delta=delta, reduction="none"),
    )


class AddOldValues(ConnectorV2):
    """Learner connector (before GAE), once per train batch: V_old(s) at the weights that
    collected the batch, stored as ``Columns.VF_PREDS`` for value clipping — and GAE's values,
    the same numbers, which RLlib's GAE then gets without a second pass — computed in chunks
    of ``chunk_size`` rows, keeping the frozen encodings for the update (``prefix_cache``;
    see :meth:`FlowRLModule.prepare_train_batch`). ``critic=False`` (``use_critic: false``):
    the values are zeros, so GAE's advantages are the rewards to go."""

    def __init__(self, *args, chunk_size: int = 64, prefix_cache: str = "device", critic: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunk_size, self.prefix_cache, self.critic = chunk_size, prefix_cache, critic

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        for module_id, module_batch in batch.items():
            module = rl_module[module_id].unwrapped()  # several learners: a DDP wrapper around ours
            if isinstance(module, FlowRLModule):
                values = module.prepare_train_batch(module_batch, self.chunk_size, self.prefix_cache, self.critic)
                module_batch[Columns.VF_PREDS] = values
            elif isinstance(module, ValueFunctionAPI):
                with torch.no_grad():
                    module_batch[Columns.VF_PREDS] = module.compute_values(module_batch).detach()
        return batch


class FlowPPOTorchLearner(PPOTorchLearner):
    """Loss = −surrogate + c_v·value loss − c_e·entropy [+ β·KL(π_θ ‖ π_ref) with
    ``ref_kl_coeff`` β > 0, π_ref the starting weights] (log-probs in fp32); with
    ``advantage_estimator: grpo`` the advantages are GRPO's (:mod:`.grpo`) and there is no
    value loss; with ``use_critic: false`` (RLlib's key) GAE runs with V ≡ 0 and λ = 1 — each
    step's advantage is its discounted reward to go Σ_k γ^k r_{t+k}, standardised over the batch
    (REINFORCE with the batch mean as the baseline) — and there is no value loss; with
    ``advantage_normalization: task`` GAE's advantages are standardised per task
    (:mod:`.task_advantages`); with ``time_limit_bootstrap: false`` GAE's return ends at the
    env's time limit (:mod:`.time_limits`; by default where the env's step limit is part of its task).

    The actor (everything but the value head) uses ``lr``; the value head ``value_lr``.
    """

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        self._actor_stopped: set = set()  # modules whose actor kl_early_stop stopped in this update
        self._minibatch_kl: dict = {}  # module id -> [(weight, approx KL)] of the minibatch's (micro-)batches
        if self.config.ref_kl_coeff > 0:  # π_ref: the weights the learner starts from
            for module in self.module.values():
                if isinstance(module.unwrapped(), FlowRLModule):
                    module.unwrapped().keep_reference()
        if self._learner_connector is not None and self.config.add_default_connectors_to_learner_pipeline:
            critic = self.config.use_critic
            self._learner_connector.insert_before(
                GeneralAdvantageEstimation,
                AddOldValues(
                    chunk_size=self.config.value_chunk_size, prefix_cache=self.config.prefix_cache, critic=critic
                ),
            )
            if self.config.advantage_estimator == "gae" and not time_limit_rule(self.config)[0]:
                self._learner_connector.insert_before(AddOneTsToEpisodesAndTruncate, RecordTimeLimits())
                self._learner_connector.insert_before(GeneralAdvantageEstimation, EndAtTimeLimits())
            if not critic:  # V ≡ 0 and λ = 1: GAE's advantage of a step is its discounted reward to go
                for connector in self._learner_connector.connectors:
                    if isinstance(connector, GeneralAdvantageEstimation):
                        connector.lambda_ = 1.0
            if self.config.advantage_normalization == "task":
                self._learner_connector.insert_after(GeneralAdvantageEstimation, TaskAdvantages())
            if self.config.advantage_estimator == "grpo":
                # Each episode's group advantage in place of GAE, which needed the extra
                # bootstrap step that AddOneTsToEpisodesAndTruncate appends.
                self._learner_connector.insert_after(GeneralAdvantageEstimation, GroupAdvantages())
                self._learner_connector.remove(GeneralAdvantageEstimation)
                self._learner_connector.remove(AddOneTsToEpisodesAndTruncate)

    @override(PPOTorchLearner)
    def update(self, *args, **kwargs):
        """RLlib's update (the actor's KL early stop starts anew with each train batch);
        afterwards the train batch's kept encodings are freed."""
        self._actor_stopped, self._minibatch_kl = set(), {}
        try:
            return super().update(*args, **kwargs)
        finally:
            for module in self.module.values():
                if isinstance(module.unwrapped(), FlowRLModule):
                    module.unwrapped().release_train_batch()

    @override(PPOTorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        model = self._module[module_id].unwrapped().model
        value_ids = {id(p) for p in model.value_parameters()}
        params = [p for p in self.get_parameters(self._module[module_id]) if p.requires_grad]
        actor = [p for p in params if id(p) not in value_ids]
        critic = [p for p in params if id(p) in value_ids]
        for name, group, lr in (("actor", actor, config.lr), ("critic", critic, config.value_lr)):
            if group:
                self.register_optimizer(
                    module_id=module_id,
                    optimizer_name=name,
                    optimizer=torch.optim.AdamW(group, weight_decay=config.weight_decay),
                    params=group,
                    lr_or_lr_schedule=lr,
                )

    @override(PPOTorchLearner)
    def apply_gradients(self, gradients_dict) -> None:
        """RLlib's optimizer steps, less the actor's of a module that ``kl_early_stop`` stopped:
        the minibatch's approx KL (its parts' weighted mean, averaged over the learners so that
        all of them decide alike) above the threshold stops the actor for the rest of the update
        — its gradients are dropped (AdamW skips a parameter without one), the critic steps."""
        kl_parts, self._minibatch_kl = self._minibatch_kl, {}
        threshold = self.config.kl_early_stop
        for module_id, parts in kl_parts.items():
            if threshold is None or module_id in self._actor_stopped:
                continue
            kl = torch.stack([sum(w * kl for w, kl in parts), torch.tensor(float(sum(w for w, _ in parts)))])
            if self.config.num_learners > 1 and torch.distributed.is_initialized():
                kl = kl.to(self._device)
                torch.distributed.all_reduce(kl)
            if float(kl[0] / kl[1]) > threshold:
                self._actor_stopped.add(module_id)
        for module_id, names in self._module_optimizers.items():
            if f"{module_id}_actor" not in names:  # RLlib's registered name: module id + "_" + ours
                continue
            stopped = module_id in self._actor_stopped
            if stopped:
                actor = {
                    id(p) for group in self.get_optimizer(module_id, "actor").param_groups for p in group["params"]
                }
                for pid in [pid for pid in gradients_dict if id(self._params[pid]) in actor]:
                    del gradients_dict[pid]
                    self._params[pid].grad = None
            self.metrics.log_value((module_id, ACTOR_STEPS_KEY), 0 if stopped else 1, reduce="sum")
        super().apply_gradients(gradients_dict)

    @override(PPOTorchLearner)
    def _set_optimizer_state(self, state) -> None:
        """RLlib's, then each fixed ``lr`` / ``value_lr`` of this learner's config is put back.
        A saved optimizer state carries the learning rate it was saved with, and RLlib sets
        the config's only after the next update: a PBT trial restored from another's
        checkpoint with a mutated lr would train one whole iteration at the donor's. A
        schedule keeps the saved value (its own value when it was saved), which the next
        update replaces with the schedule's."""
        super()._set_optimizer_state(state)
        for optimizer, schedule in self._optimizer_lr_schedules.items():
            if not schedule.use_schedule:
                self._set_optimizer_lr(optimizer, lr=schedule.get_current_value())

    @override(PPOTorchLearner)
    def compute_loss_for_module(
        self, *, module_id, config, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        if Columns.LOSS_MASK in batch:
            mask = batch[Columns.LOSS_MASK]
            num_valid = torch.clamp(mask.sum(), min=1)

            def masked_mean(x):
                return torch.sum(x[mask]) / num_valid

        else:
            mask = None
            masked_mean = torch.mean

        log_ratio = fwd_out[LOGP].float() - batch[LOGP].float()
        advantages = batch[Postprocessing.ADVANTAGES].float()
        surrogate = ppo_surrogate(log_ratio, advantages, config.clip_param, config.dual_clip_param)
        with torch.no_grad():
            ratio = torch.exp(log_ratio)
            clip_fraction = masked_mean(((ratio - 1).abs() > config.clip_param).float().mean(1))
        # k3 estimator of KL(old‖new), averaged over the N ratios.
        approx_kl = masked_mean(((ratio - 1) - log_ratio).mean(1))
        if config.kl_early_stop is not None:  # kept for apply_gradients' decision, per (micro-)batch
            weight = float(mask.sum()) if mask is not None else len(advantages)
            self._minibatch_kl.setdefault(module_id, []).append((weight, approx_kl.detach().float().cpu()))

        if config.advantage_estimator == "grpo" or not config.use_critic:  # no critic: no value loss
            values = targets = None
            vf_loss = torch.zeros_like(surrogate)
        else:
            values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
            targets = batch[Postprocessing.VALUE_TARGETS].float()
            vf_loss = clipped_huber_value_loss(
                values, batch[Columns.VF_PREDS].float(), targets, config.vf_huber_delta, config.value_clip_param
            )
        entropy = fwd_out[ENTROPY]
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = masked_mean(-surrogate + config.vf_loss_coeff * vf_loss - entropy_coeff * entropy)
        if config.use_kl_loss:
            total = total + self.curr_kl_coeffs_per_module[module_id] * approx_kl
        anchor = {}
        if config.ref_kl_coeff > 0 and REF_KL not in fwd_out:
            raise ValueError(
                f"ref_kl_coeff is {config.ref_kl_coeff} but module {module_id!r} keeps no reference policy: "
                "it is kept when the learner is built with ref_kl_coeff > 0 (the weights it starts from). "
                "Set ref_kl_coeff > 0 in the config the algorithm is built with (not on a running one)."
            )
        if REF_KL in fwd_out:
            ref_kl = masked_mean(fwd_out[REF_KL])
            total = total + config.ref_kl_coeff * ref_kl
            anchor = {REF_KL_KEY: ref_kl}

        valid = mask if mask is not None else slice(None)
        critic = {}
        if values is not None:
            critic = {
                VF_LOSS_KEY: masked_mean(vf_loss),
                LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: masked_mean(
                    torch.nn.functional.huber_loss(values, targets, delta=config.vf_huber_delta, reduction="none")
                ),
            }
        self._log_loss_metrics(
            module_id,
            {
                POLICY_LOSS_KEY: -masked_mean(surrogate),
                **critic,
                ENTROPY_KEY: masked_mean(entropy),
                LEARNER_RESULTS_KL_KEY: approx_kl,
                APPROX_KL_KEY: approx_kl,
                CLIP_FRACTION_KEY: clip_fraction,
                MEAN_ABS_LOGP_KEY: masked_mean(fwd_out[LOGP].abs().mean(1)),
                NOISE_STD_KEY: masked_mean(fwd_out[NOISE_STD]),
                **anchor,
            },
            weight=float(mask.sum()) if mask is not None else len(advantages),
            targets=targets[valid].detach() if values is not None else None,
            values=values[valid].detach() if values is not None else None,
        )
        return total

    # -- micro-batches ------------------------------------------------------------------
    def _log_loss_metrics(self, module_id, means: dict, weight: float, targets, values) -> None:
        """Log a (micro-)batch's loss metrics: at once, or — inside a micro-batched update —
        kept until :meth:`_log_micro_batch_metrics` logs their ``weight``-weighted means
        (the explained variance over all the micro-batches' targets and values)."""
        if self._micro_metrics is not None:
            self._micro_metrics.setdefault(module_id, []).append((weight, means, targets, values))
            return
        if values is not None:
            means = dict(means, **{LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(targets, values)})
        self.metrics.log_dict(means, key=module_id, window=1)

    def _log_micro_batch_metrics(self) -> None:
        parts, self._micro_metrics = self._micro_metrics, None
        for module_id, rows in parts.items():
            total = sum(w for w, *_ in rows)
            means = {key: sum(w * m[key].detach() for w, m, *_ in rows) / total for key in rows[0][1]}
            critic = rows[0][3] is not None
            targets = torch.cat([t for *_, t, _ in rows]) if critic else None
            values = torch.cat([v for *_, v in rows]) if critic else None
            self._log_loss_metrics(module_id, means, total, targets, values)

    _micro_metrics: dict | None = None

    @override(PPOTorchLearner)
    def _uncompiled_update(self, batch: dict, **kwargs):
        """One optimizer step per minibatch; with ``micro_batch_size``, the minibatch runs
        through forward and backward in micro-batches whose gradients accumulate, each
        micro-batch's loss weighted by its share of the minibatch's (valid) samples, so that
        the summed gradient is the whole minibatch's: L = Σ_i (n_i / n)·L_i. With several
        learners, DDP all-reduces only at the last micro-batch (``no_sync`` before)."""
        micro = self.config.micro_batch_size
        sizes = {mid: num_rows(b) for mid, b in batch.items()}
        if not micro or max(sizes.values()) <= micro:
            return super()._uncompiled_update(batch, **kwargs)
        self._compute_off_policyness(batch)
        for optim in self._optimizer_parameters:
            optim.zero_grad(set_to_none=True)
        valid = {mid: _num_valid(b) for mid, b in batch.items()}
        num_micro = -(-max(sizes.values()) // micro)
        loss_per_module = {mid: 0.0 for mid in batch}
        self._micro_metrics = {}
        try:
            for i in range(num_micro):
                part = {
                    mid: rows_of(b, i * micro, (i + 1) * micro) for mid, b in batch.items() if i * micro < sizes[mid]
                }
                with contextlib.ExitStack() as stack:
                    if i < num_micro - 1:
                        self._hold_gradient_all_reduce(stack)
                    fwd_out = self.module.forward_train(part)
                    losses = self.compute_losses(fwd_out=fwd_out, batch=part)
                    share = {mid: _num_valid(part[mid]) / valid[mid] for mid in losses}
                    sum(loss * share[mid] for mid, loss in losses.items()).backward()
                for mid, loss in losses.items():
                    loss_per_module[mid] = loss_per_module[mid] + loss.detach() * share[mid]
        finally:
            self._log_micro_batch_metrics()
        gradients = {pid: p.grad for pid, p in self._params.items()}
        with contextlib.ExitStack() as stack:
            self._hold_gradient_all_reduce(stack)  # as RLlib's own update applies them
            self.apply_gradients(self.postprocess_gradients(gradients))
        return fwd_out, loss_per_module, {}

    def _hold_gradient_all_reduce(self, stack: contextlib.ExitStack) -> None:
        """With several learners, enter every DDP module's ``no_sync`` in ``stack``."""
        if self.config.num_learners > 1:
            for mod in self.module.values():
                if isinstance(mod, torch.nn.Module):
                    stack.enter_context(mod.no_sync())


def _num_valid(batch: dict) -> float:
    mask = batch.get(Columns.LOSS_MASK)
    return float(mask.sum()) if mask is not None else float(num_rows(batch))
