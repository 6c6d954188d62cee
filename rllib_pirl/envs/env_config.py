"""``env_config`` → the settings dataclass of an env (the checks both simulators share)."""

from __future__ import annotations

from typing import Any


def dataclass_kwargs(cls, env_config, env_name: str) -> dict[str, Any]:
    """The keyword arguments of the dataclass ``cls`` from an ``env_config``: RLlib's
    ``num_envs`` and the algorithm's ``group_size`` (GRPO; read by the vector env) dropped,
    ``task`` accepted for a one-element ``tasks``, unknown keys refused with the valid ones
    listed."""
    config = dict(env_config or {})
    config.pop("num_envs", None)
    config.pop("group_size", None)
    if "task" in config:
        if "tasks" in config:
            raise ValueError("Give either env_config.task or env_config.tasks, not both.")
        config["tasks"] = [config.pop("task")]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"Unknown {env_name} env_config key(s) {unknown}; valid: task, {', '.join(sorted(known))}.")
    return config
