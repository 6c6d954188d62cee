"""Cost of the πRL pieces on the state flow policy (CPU, one thread).

1. Rollout: Flow-SDE exploration forward (stochastic chain + log-prob)
   relative to the deterministic ODE forward (inference). Target ≤ 1.1×.
2. Learner: cost per sample of one forward + backward of the loss, Flow-SDE
   relative to Flow-Noise at K = 4. Target ≤ 0.4×. And Flow-SDE's one stochastic step
   relative to all K stochastic (``sde_steps: all``).

Timings are interleaved: every round runs each side back to back, and a ratio is
the median over rounds of the per-round ratio, so that both sides of it see the
same machine load (the machines are shared and noisy).

    python benchmarks/flow_speed.py [--batch 64] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from rllib_pirl.algorithms.learner import clipped_huber_value_loss, ppo_surrogate
from rllib_pirl.rl_module import LATENTS, LOGP, STEPS, FlowRLModule


def make_module(exploration, obs_dim, chunk, action_dim, K, hidden, sde_steps="one"):
    torch.manual_seed(0)
    return FlowRLModule(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (chunk, action_dim), np.float32),
        model_config={
            "num_denoise_steps": K,
            "action_chunk": chunk,
            "exploration": exploration,
            "sde_steps": sde_steps,
            "logprob_reduction": "per_element",
            "model_kwargs": {"hidden_sizes": (hidden,) * 3, "value_hidden_sizes": (hidden, hidden)},
        },
    )


def timed(fn, reps):
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def interleaved(fns, rounds, reps):
    """Seconds per call of each fn in every round (the fns run back to back in each
    round, so a ratio taken within a round sees one machine load)."""
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            samples[i].append(timed(fn, reps))
    return samples


def paired_ratio(num, den):
    """Median over rounds of num/den, and the median times themselves."""
    return statistics.median(a / b for a, b in zip(num, den)), statistics.median(num), statistics.median(den)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--obs-dim", type=int, default=42)
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--action-dim", type=int, default=7)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    shape = (args.obs_dim, args.chunk, args.action_dim, args.K, args.hidden)
    obs = torch.randn(args.batch, args.obs_dim)
    batch = {Columns.OBS: obs}
    print(
        f"state flow policy: obs {args.obs_dim}, chunk {args.chunk} x {args.action_dim}, K={args.K}, "
        f"MLP 3x{args.hidden}, batch {args.batch}, torch threads 1, {args.rounds} rounds"
    )

    # 1. rollout forward: exploration (Flow-SDE and Flow-Noise) vs deterministic ODE.
    sde, noise = make_module("sde", *shape), make_module("noise", *shape)
    with torch.no_grad():
        ode_s, sde_s, noise_s = interleaved(
            [
                lambda: sde.forward_inference(batch),
                lambda: sde.forward_exploration(batch),
                lambda: noise.forward_exploration(batch),
            ],
            args.rounds,
            args.reps,
        )
    r_sde, sde_t, ode_t = paired_ratio(sde_s, ode_s)
    r_noise, noise_t, _ = paired_ratio(noise_s, ode_s)
    print(f"rollout forward  ODE (inference)        {ode_t * 1e3:8.3f} ms")
    print(f"rollout forward  Flow-SDE exploration   {sde_t * 1e3:8.3f} ms   ratio {r_sde:.3f}x  (target <= 1.1x)")
    print(f"rollout forward  Flow-Noise exploration {noise_t * 1e3:8.3f} ms   ratio {r_noise:.3f}x")

    # 2. learner: forward_train + values + loss + backward, per sample.
    def learner_step(module):
        with torch.no_grad():
            out = module.forward_exploration(batch)
        train = {Columns.OBS: obs, LATENTS: out[LATENTS], STEPS: out[STEPS]}
        adv, target = torch.randn(args.batch), torch.randn(args.batch)
        with torch.no_grad():
            old_v = module.compute_values(train)

        def step():
            module.zero_grad(set_to_none=True)
            fwd = module.forward_train(train)
            values = module.compute_values(train, embeddings=fwd[Columns.EMBEDDINGS])
            loss = (
                -ppo_surrogate(fwd[LOGP] - out[LOGP], adv, 0.2)
                + clipped_huber_value_loss(values, old_v, target, 10.0, 0.2)
            ).mean()
            loss.backward()

        return step

    sde_all = make_module("sde", *shape, sde_steps="all")
    sde_s, noise_s, all_s = interleaved(
        [learner_step(sde), learner_step(noise), learner_step(sde_all)], args.rounds, args.reps
    )
    ratio, sde_l, noise_l = paired_ratio(sde_s, noise_s)
    ratio_all, _, all_l = paired_ratio(sde_s, all_s)
    print(f"learner per sample  Flow-Noise  {noise_l / args.batch * 1e6:8.2f} us")
    print(f"learner per sample  Flow-SDE    {sde_l / args.batch * 1e6:8.2f} us   ratio {ratio:.3f}x  (target <= 0.4x)")
    print(
        f"learner per sample  Flow-SDE, all K steps stochastic {all_l / args.batch * 1e6:8.2f} us   one step / all: {ratio_all:.3f}x"
    )


if __name__ == "__main__":
    main()
