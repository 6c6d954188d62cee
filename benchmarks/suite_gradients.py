"""Do the tasks of the ManiSkill suite pull the shared policy in conflicting directions? Per-task
policy gradients of one train batch, CPU.

Builds the tuned example (``--config`` replaces keys), restores an algorithm checkpoint
(``--checkpoint``: a run's save, whose critic is trained; without it the SFT start and an
untrained critic), samples ``--steps`` policy steps with the exploration policy as training
does, runs the learner's connector pipeline (GAE and the configured advantage standardisation)
and, for each task k, takes the gradient g_k of PPO's surrogate over task k's rows (at the
sampling weights: the ratio is 1, so g_k = ∇ mean_k A·log π) with respect to the actor's
parameters (all but the value head). Prints, per task: its rows, |g_k|, the cosine between
g_k and the rest of the batch's gradient (the other tasks' rows, weighted as the update weighs
them), and the cosine between the gradients of two halves of its episodes — how much of g_k is
signal rather than sampling noise (near 0: noise; the cross-task cosines are then as noisy).

    source .vulkan/env.sh
    python benchmarks/suite_gradients.py --example flow_sde_suite.yaml --checkpoint runs/suite_n02
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import tree
from pickcube_learning import build_example_algo
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_pirl.algorithms.learner import ppo_surrogate
from rllib_pirl.rl_module import LOGP


def rows_of_batch(batch, rows: torch.Tensor):
    """The batch's tensors (nested dicts included) at ``rows``, as ``rllib_pirl.rl_module.rows_of``
    takes a slice; other entries as they are."""
    return tree.map_structure(lambda x: x[rows] if torch.is_tensor(x) and x.dim() > 0 else x, batch)


def surrogate_gradient(learner, module, batch, rows: torch.Tensor) -> torch.Tensor:
    """∇ of −mean over ``rows`` of PPO's surrogate, flattened over the actor's parameters."""
    config = learner.config
    part = rows_of_batch(batch, rows)
    fwd = module.forward_train(part)
    log_ratio = fwd[LOGP].float() - part[LOGP].float()
    surrogate = ppo_surrogate(
        log_ratio, part[Postprocessing.ADVANTAGES].float(), config.clip_param, config.dual_clip_param
    )
    value_ids = {id(p) for p in module.model.value_parameters()}
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in value_ids]
    grads = torch.autograd.grad(-surrogate.mean(), params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--example", default="flow_sde_suite.yaml")
    p.add_argument("--config", type=json.loads, default={}, help="config keys replaced, as JSON")
    p.add_argument("--checkpoint", help="an algorithm save of a run of the example (its trained critic)")
    p.add_argument("--steps", type=int, default=2048, help="policy steps sampled (one train batch)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    _, algo = build_example_algo(args.example, seed=args.seed, overrides=args.config)
    if args.checkpoint:
        algo.restore_from_path(args.checkpoint)
    learner = algo.learner_group._learner
    module = learner.module["default_policy"].unwrapped()
    episodes = algo.env_runner.sample(num_timesteps=args.steps)
    episode_of_row = np.concatenate([np.full(len(e) + 1, i) for i, e in enumerate(episodes)])  # + GAE's bootstrap step
    batch = learner._learner_connector(
        rl_module=learner.module, batch={}, episodes=episodes, shared_data={}, metrics=learner.metrics
    )["default_policy"]
    tasks = torch.as_tensor(batch[Columns.OBS]["task_id"]).reshape(-1)
    inside = (
        batch[Columns.LOSS_MASK].reshape(-1).bool()
        if Columns.LOSS_MASK in batch
        else torch.ones_like(tasks, dtype=torch.bool)
    )
    if len(episode_of_row) != len(tasks):
        raise RuntimeError(
            f"{len(tasks)} rows for {len(episode_of_row)} episode steps: the row order is not per episode"
        )
    episode_of_row = torch.as_tensor(episode_of_row)
    names = {int(np.asarray(e.get_observations(0)["task_id"]).ravel()[0]): e.get_infos(0).get("task") for e in episodes}
    total = inside.sum()
    gradients = {}
    for task in sorted(set(tasks[inside].tolist())):
        rows = torch.nonzero(inside & (tasks == task)).ravel()
        gradients[task] = (rows, surrogate_gradient(learner, module, batch, rows))
    print(
        f"advantage_normalization: {algo.config.advantage_normalization}; {int(total)} rows, {len(episodes)} episode chunks"
    )
    print(f"{'task':16s} {'rows':>5s} {'|g_k|':>9s} {'cos(g_k, rest)':>15s} {'cos(halves)':>12s}  adv mean/std")
    for task, (rows, g) in gradients.items():
        rest = sum(len(r) * h for t, (r, h) in gradients.items() if t != task) / (total - len(rows))
        own = episode_of_row[rows]
        ids = torch.unique(own)
        half = torch.isin(
            own, ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[: len(ids) // 2]]
        )
        halves = (
            cosine(
                surrogate_gradient(learner, module, batch, rows[half]),
                surrogate_gradient(learner, module, batch, rows[~half]),
            )
            if half.any() and (~half).any()
            else float("nan")
        )
        adv = batch[Postprocessing.ADVANTAGES][rows].float()
        print(
            f"{str(names.get(task, task))[:16]:16s} {len(rows):5d} {float(g.norm()):9.4f} {cosine(g, rest):15.3f} "
            f"{halves:12.3f}  {float(adv.mean()):+.2f}/{float(adv.std()):.2f}",
            flush=True,
        )
    algo.stop()


if __name__ == "__main__":
    main()
