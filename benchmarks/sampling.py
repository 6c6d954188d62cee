"""Timing RLlib's sampling (shared by the rollout benchmarks)."""

from __future__ import annotations

import time

import numpy as np


def env_steps_per_s(algo, num_envs: int, chunks: int, chunk: int) -> tuple[float, int]:
    """Env steps/s of ``chunks`` policy steps sampled by the algorithm's local env runner
    (exploration), after a warm-up that includes the first reset; and the policy steps."""
    runner = algo.env_runner
    runner.sample(num_timesteps=num_envs * 2, explore=True)
    start = time.perf_counter()
    episodes = runner.sample(num_timesteps=chunks, explore=True)
    elapsed = time.perf_counter() - start
    steps = sum(int(np.sum([i.get("chunk_steps", chunk) for i in e.get_infos()[1:]])) for e in episodes)
    return steps / elapsed, sum(len(e) for e in episodes)
