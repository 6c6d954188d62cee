"""RLlib callbacks of rllib_pirl."""

from __future__ import annotations

import os
import re

from ray.rllib.callbacks.callbacks import RLlibCallback

SUCCESS_RATE_KEY = "success_rate"
RETURN_MEAN_KEY = "episode_return_mean"


class SuccessRateCallback(RLlibCallback):
    """Logs ``env_runners/success_rate``: the share of episodes in which the env's
    ``info["success"]`` was true at some step (mean over the last
    ``metrics_num_episodes_for_smoothing`` episodes, like ``episode_return_mean``).
    Envs that never report ``success`` log nothing; envs that report ``info["task"]``
    also get ``success_rate_<task>`` and ``episode_return_mean_<task>``. After each iteration, exports :data:`RUN_METRICS`
    through Ray's metrics API."""

    def on_episode_end(self, *, episode, prev_episode_chunks=None, env_runner=None, metrics_logger=None, **kwargs):
        infos = [info for chunk in [*(prev_episode_chunks or []), episode] for info in chunk.get_infos()]
        if metrics_logger is None or not any("success" in info for info in infos):
            return
        window = env_runner.config.metrics_num_episodes_for_smoothing if env_runner is not None else 100
        success = float(any(bool(info.get("success", False)) for info in infos))
        metrics_logger.log_value(SUCCESS_RATE_KEY, success, reduce="mean", window=window)
        task = infos[-1].get("task")
        if task:  # multi-task suites: success and return per task
            metrics_logger.log_value(f"{SUCCESS_RATE_KEY}_{task}", success, reduce="mean", window=window)
            episode_return = sum(chunk.get_return() for chunk in [*(prev_episode_chunks or []), episode])
            metrics_logger.log_value(f"{RETURN_MEAN_KEY}_{task}", episode_return, reduce="mean", window=window)

    def on_train_result(self, *, algorithm, result, **kwargs):
        export_run_metrics(algorithm, result)


#: The run metrics exported through Ray's metrics API (the dashboard's Metrics view and each
#: node's Prometheus endpoint, as ``ray_<name>``): name → (description, value from a result).
RUN_METRICS = {
    "pirl_env_steps_per_s": (
        "env steps (policy steps: one per action chunk) sampled per second of the last iteration",
        lambda r: _get(r, "env_runners", "num_env_steps_sampled") / max(r.get("time_this_iter_s") or 0, 1e-9),
    ),
    "pirl_success_rate": ("success rate of the exploration episodes", lambda r: _get(r, "env_runners", "success_rate")),
    "pirl_learner_samples_per_s": (
        "samples (rows x epochs) the learner trained on per second of its update",
        lambda r: (
            _get(r, "learners", "__all_modules__", "num_module_steps_trained")
            / max(_get(r, "timers", "learner_update_timer") or 0, 1e-9)
        ),
    ),
    "pirl_iteration_time_s": ("wall time of the last training iteration", lambda r: r.get("time_this_iter_s")),
    "pirl_noise_level": ("Flow-SDE noise level in use", lambda r: _get(r, "exploration", "noise_level")),
}
_gauges: dict = {}


def trial_name(algorithm) -> str:
    """The Tune trial's name (``FlowSDE_PointReach_1d86f_00000``) from its folder; RLlib's
    ``Algorithm`` does not keep Tune's trial info (its ``trial_id`` is "default")."""
    folder = os.path.basename(os.path.normpath(getattr(algorithm, "logdir", "") or "")) or "default"
    match = re.match(r"(.+_[0-9a-f]{5}_\d{5})(_|$)", folder)
    return match.group(1) if match else folder


def _get(result, *keys):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def export_run_metrics(algorithm, result) -> None:
    """Set the :data:`RUN_METRICS` gauges of this trial (tags: ``trial``, ``algorithm``)
    from an iteration's result; missing values are skipped."""
    from ray.util.metrics import Gauge

    tags = {"trial": trial_name(algorithm), "algorithm": type(algorithm).__name__}
    for name, (description, value_of) in RUN_METRICS.items():
        try:
            value = value_of(result)
        except TypeError:  # a part of it is missing
            value = None
        if value is None:
            continue
        if name not in _gauges:
            _gauges[name] = Gauge(name, description=description, tag_keys=("trial", "algorithm"))
        _gauges[name].set(float(value), tags=tags)
