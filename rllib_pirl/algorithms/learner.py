"""The learner: PPO's clipped surrogate on the denoising chain's log-probs."""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import explained_variance

from rllib_pirl.rl_module import ENTROPY, LOGP, NOISE_STD

CLIP_FRACTION_KEY = "clip_fraction"
APPROX_KL_KEY = "approx_kl"
MEAN_ABS_LOGP_KEY = "mean_abs_logp"
NOISE_STD_KEY = "noise_std"


def ppo_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """Clipped surrogate per sample, averaged over its N ratios:
    mean_n min(r·A, clip(r, 1−ε, 1+ε)·A), r = exp(log_ratio), log_ratio (B, N), A (B,)."""
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]
    return torch.minimum(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean(dim=1)


def clipped_huber_value_loss(values, old_values, targets, delta: float, clip: float) -> torch.Tensor:
    """max(Huber_δ(V − R), Huber_δ(V_clip − R)), V_clip = V_old + clip(V − V_old, −c, c)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    huber = torch.nn.functional.huber_loss
    return torch.maximum(
        huber(values, targets, delta=delta, reduction="none"),
        huber(clipped, targets, delta=delta, reduction="none"),
    )


class AddOldValues(ConnectorV2):
    """Learner connector: V_old(s) at the weights that collected the batch, stored as
    ``Columns.VF_PREDS`` for value clipping (runs once per train batch, before GAE)."""

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        with torch.no_grad():
            for module_id, module_batch in batch.items():
                module = rl_module[module_id].unwrapped()  # several learners: a DDP wrapper around ours
                if isinstance(module, ValueFunctionAPI):
                    module_batch[Columns.VF_PREDS] = module.compute_values(module_batch).detach()
        return batch


class FlowPPOTorchLearner(PPOTorchLearner):
    """Loss = −surrogate + c_v·value loss − c_e·entropy (log-probs in fp32).

    The actor (everything but the value head) uses ``lr``; the value head ``value_lr``.
    """

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        if self._learner_connector is not None and self.config.add_default_connectors_to_learner_pipeline:
            self._learner_connector.insert_before(GeneralAdvantageEstimation, AddOldValues())

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
        surrogate = ppo_surrogate(log_ratio, advantages, config.clip_param)
        with torch.no_grad():
            ratio = torch.exp(log_ratio)
            clip_fraction = masked_mean(((ratio - 1).abs() > config.clip_param).float().mean(1))
        # k3 estimator of KL(old‖new), averaged over the N ratios.
        approx_kl = masked_mean(((ratio - 1) - log_ratio).mean(1))

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

        valid = mask if mask is not None else slice(None)
        self.metrics.log_dict(
            {
                POLICY_LOSS_KEY: -masked_mean(surrogate),
                VF_LOSS_KEY: masked_mean(vf_loss),
                LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: masked_mean(
                    torch.nn.functional.huber_loss(values, targets, delta=config.vf_huber_delta, reduction="none")
                ),
                LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(targets[valid], values[valid]),
                ENTROPY_KEY: masked_mean(entropy),
                LEARNER_RESULTS_KL_KEY: approx_kl,
                APPROX_KL_KEY: approx_kl,
                CLIP_FRACTION_KEY: clip_fraction,
                MEAN_ABS_LOGP_KEY: masked_mean(fwd_out[LOGP].abs().mean(1)),
                NOISE_STD_KEY: masked_mean(fwd_out[NOISE_STD]),
            },
            key=module_id,
            window=1,
        )
        return total
