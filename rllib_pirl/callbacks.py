"""RLlib callbacks of rllib_pirl."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

SUCCESS_RATE_KEY = "success_rate"


class SuccessRateCallback(RLlibCallback):
    """Logs ``env_runners/success_rate``: the share of episodes in which the env's
    ``info["success"]`` was true at some step (mean over the last
    ``metrics_num_episodes_for_smoothing`` episodes, like ``episode_return_mean``).
    Envs that never report ``success`` log nothing; envs that report ``info["task"]``
    also get ``success_rate_<task>``."""

    def on_episode_end(self, *, episode, prev_episode_chunks=None, env_runner=None, metrics_logger=None, **kwargs):
        infos = [info for chunk in [*(prev_episode_chunks or []), episode] for info in chunk.get_infos()]
        if metrics_logger is None or not any("success" in info for info in infos):
            return
        window = env_runner.config.metrics_num_episodes_for_smoothing if env_runner is not None else 100
        success = float(any(bool(info.get("success", False)) for info in infos))
        metrics_logger.log_value(SUCCESS_RATE_KEY, success, reduce="mean", window=window)
        task = infos[-1].get("task")
        if task:  # multi-task suites: success per task
            metrics_logger.log_value(f"{SUCCESS_RATE_KEY}_{task}", success, reduce="mean", window=window)
