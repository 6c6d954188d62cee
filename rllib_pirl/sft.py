"""Few-shot SFT: flow-matching behaviour cloning of a state flow policy on demos.

Every step t of a demo gives one pair (observation o_t, action chunk a_{t:t+H}); the
chunk is padded past the episode's end by repeating the last action. The policy
learns the velocity field by the conditional flow-matching loss of
:meth:`FlowActionModel.flow_matching_loss`, with observations and actions
normalised by the demos' statistics (stored in the model). The result is a model
checkpoint (``config.json`` + ``model.safetensors``) that a yaml names as the RL
starting point: ``model_config: {init_checkpoint: DIR}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from rllib_pirl.demos import Demo
from rllib_pirl.models import StateFlowPolicy
from rllib_pirl.models.checkpoint import save_model


def chunk_dataset(demos: Sequence[Demo], tasks: Sequence[str], chunk: int, state_dim: int) -> dict[str, torch.Tensor]:
    """All (state, task id, action chunk) pairs of the demos."""
    states, task_ids, chunks = [], [], []
    for demo in demos:
        if demo.task not in tasks:
            raise ValueError(f"A demo of {demo.task!r} is not among the tasks {list(tasks)}.")
        if demo.obs.shape[1] > state_dim:
            raise ValueError(f"{demo.task} states have {demo.obs.shape[1]} dims, more than state_dim={state_dim}.")
        steps = len(demo.actions)
        padded = np.concatenate([demo.actions, np.repeat(demo.actions[-1:], chunk - 1, axis=0)])
        obs = np.zeros((steps, state_dim), np.float32)
        obs[:, : demo.obs.shape[1]] = demo.obs[:steps]
        states.append(obs)
        task_ids.append(np.full(steps, list(tasks).index(demo.task), np.int64))
        chunks.append(np.stack([padded[t : t + chunk] for t in range(steps)]))
    return {
        "state": torch.from_numpy(np.concatenate(states)),
        "task_id": torch.from_numpy(np.concatenate(task_ids))[:, None],
        "actions": torch.from_numpy(np.concatenate(chunks)),
    }


def train_sft(
    demos: Sequence[Demo],
    tasks: Sequence[str],
    out: str,
    chunk: int = 5,
    state_dim: int | None = None,
    steps: int = 20_000,
    batch_size: int = 256,
    lr: float = 3e-4,
    hidden_sizes: Sequence[int] = (256, 256, 256),
    seed: int = 0,
    log_every: int = 1000,
    metadata: dict | None = None,
) -> StateFlowPolicy:
    """Train by flow matching and write the checkpoint folder ``out``."""
    if not demos:
        raise ValueError("No demonstrations to train on.")
    if chunk < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"chunk, steps and batch_size must be >= 1, got {chunk}, {steps}, {batch_size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    state_dim = state_dim or max(d.obs.shape[1] for d in demos)
    data = chunk_dataset(demos, tasks, chunk, state_dim)
    n, action_dim = data["actions"].shape[0], data["actions"].shape[-1]
    model = StateFlowPolicy(
        obs_dim=state_dim, horizon=chunk, action_dim=action_dim, hidden_sizes=hidden_sizes, num_tasks=len(tasks)
    )
    with torch.no_grad():
        model.obs_mean.copy_(data["state"].mean(0))
        model.obs_std.copy_(data["state"].std(0).clamp(min=1e-2))
        flat = data["actions"].reshape(-1, action_dim)
        model.action_mean.copy_(flat.mean(0))
        model.action_std.copy_(flat.std(0).clamp(min=1e-2))
    policy_params = [p for name, p in model.named_parameters() if not name.startswith(("value_head", "noise_head"))]
    optimizer = torch.optim.AdamW(policy_params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    print(
        f"[sft] {len(demos)} demos, {n} (state, chunk) pairs, tasks {list(tasks)}, chunk {chunk}, "
        f"state {state_dim}, actions {action_dim}, {steps} steps of batch {batch_size}",
        flush=True,
    )
    start, running = time.time(), []
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, n, batch_size))
        loss = model.flow_matching_loss(
            {"state": data["state"][idx], "task_id": data["task_id"][idx]}, data["actions"][idx]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"[sft] step {step}/{steps}  loss {np.mean(running):.4f}  ({time.time() - start:.0f} s)", flush=True)
            running = []
    info = {"tasks": list(tasks), "chunk": chunk, "num_demos": len(demos), "steps": steps, "seed": seed}
    save_model(model, out, metadata={**info, **(metadata or {})})
    print(f"[sft] wrote {out}", flush=True)
    return model


def demo_counts(demos: Sequence[Demo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for demo in demos:
        counts[demo.task] = counts.get(demo.task, 0) + 1
    return counts


def tasks_of(demos: Sequence[Demo]) -> list[str]:
    return sorted(demo_counts(demos))
