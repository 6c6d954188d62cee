"""One training iteration's own sampling and learner-update seconds.

RLlib (2.60) logs ``timers/env_runner_sampling_timer`` and ``timers/learner_update_timer`` as
exponential moving averages with coefficient 0.01: after a warm-up iteration of 60 s and one of
10 s the result says 59.5 s. A benchmark that wants the second iteration's figures deletes the
two averages before it, so the result holds that iteration's values alone.
"""

from __future__ import annotations

import time

from ray.rllib.utils.metrics import ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, TIMERS


def train_timed(algo) -> tuple[dict, dict]:
    """``algo.train()`` and this iteration's seconds: ``{"wall", "sampling", "update"}``."""
    for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER):
        algo.metrics.delete(TIMERS, timer, key_error=False)
    start = time.perf_counter()
    result = algo.train()
    wall = time.perf_counter() - start
    timers = result[TIMERS]
    return result, {"wall": wall, "sampling": timers[ENV_RUNNER_SAMPLING_TIMER], "update": timers[LEARNER_UPDATE_TIMER]}
