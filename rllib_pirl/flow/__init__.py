"""Pure-torch math of flow policies: steps, chains, log-probs (no RLlib, no simulators)."""

from rllib_pirl.flow.chain import (
    LOGPROB_REDUCTIONS,
    Chain,
    Exploration,
    LearnedNoiseExploration,
    SDEExploration,
    chain_log_prob,
    reduce_log_prob,
    sample_chain,
)
from rllib_pirl.flow.steps import (
    bounded_std,
    flow_noise_step,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    ode_step,
    sde_step,
    time_grid,
)

__all__ = [
    "LOGPROB_REDUCTIONS",
    "Chain",
    "Exploration",
    "LearnedNoiseExploration",
    "SDEExploration",
    "bounded_std",
    "chain_log_prob",
    "flow_noise_step",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "ode_step",
    "reduce_log_prob",
    "sample_chain",
    "sde_step",
    "time_grid",
]
