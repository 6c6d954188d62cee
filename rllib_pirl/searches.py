"""Ray Tune searches from a tuned-example yaml: sampled values, search algorithms, schedulers.

An experiment of a yaml file may hold, beside ``env``, ``run``, ``stop``, ``config``::

    num_samples: 8                      # trials (× the grid, when there is a grid_search)
    tune_config:
      metric: env_runners/success_rate  # what the search and the scheduler optimise
      mode: max
      search_alg: optuna                # random (default) | optuna | hyperopt, or {type: optuna, seed: 0}
      scheduler: {type: asha, max_t: 40, grace_period: 5}   # fifo (default) | asha | pbt, with their arguments
      max_concurrent_trials: 2
      time_budget_s: 36000

and, anywhere in ``config`` (and as PBT's ``hyperparam_mutations``), the sampled values
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{choice: [a, b, …]}``,
``{randint: [lo, hi]}`` (hi excluded, as Tune's) and ``{grid_search: [a, b, …]}``.

Everything is checked here, before Ray starts: :func:`space_errors` (the forms),
:func:`candidates` (the values a search can give, which the experiment validates against
the algorithm's config), :func:`tune_config_errors` (the tune_config); :func:`tune_space`,
:func:`make_search_alg` and :func:`make_scheduler` build Tune's objects when the run starts.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

#: The sampled-value forms of a yaml (their Tune function; grid_search stays a dict for Tune).
SAMPLERS = ("uniform", "loguniform", "choice", "randint", "grid_search")
#: Tune's other sampling functions: a yaml that uses one gets a clear error, not a config dict.
OTHER_TUNE_SAMPLERS = (
    "quniform",
    "qloguniform",
    "randn",
    "normal",
    "qrandn",
    "qrandint",
    "lograndint",
    "qlograndint",
    "sample_from",
)
SEARCH_ALGS = {
    "random": ("ray.tune.search.basic_variant", "BasicVariantGenerator", None),
    "optuna": ("ray.tune.search.optuna", "OptunaSearch", "optuna"),
    "hyperopt": ("ray.tune.search.hyperopt", "HyperOptSearch", "hyperopt"),
}
SCHEDULERS = {
    "fifo": ("ray.tune.schedulers", "FIFOScheduler"),
    "asha": ("ray.tune.schedulers", "ASHAScheduler"),
    "pbt": ("ray.tune.schedulers", "PopulationBasedTraining"),
}
TUNE_CONFIG_KEYS = ("metric", "mode", "search_alg", "scheduler", "max_concurrent_trials", "time_budget_s")
DEFAULT_METRIC, DEFAULT_MODE = "env_runners/episode_return_mean", "max"
#: Arguments that tune_config sets itself (not per search algorithm or scheduler).
_SET_BY_TUNE_CONFIG = ("metric", "mode", "space", "max_concurrent", "custom_explore_fn")
EXTRA = "pip install 'rllib_pirl[search]'"


def is_space(value) -> bool:
    """Whether ``value`` is a sampled-value form (a one-key mapping named like a sampler)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SAMPLERS + OTHER_TUNE_SAMPLERS


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _form_error(path: str, value) -> str | None:
    (kind, args), forms = next(iter(value.items())), ", ".join(f"{{{s}: ...}}" for s in SAMPLERS)
    if kind in OTHER_TUNE_SAMPLERS:
        return f"{path}: {{{kind}: ...}} is not a sampled-value form of the yaml; use one of {forms}."
    if kind in ("choice", "grid_search"):
        if not isinstance(args, list) or not args:
            return f"{path}: {{{kind}: [a, b, ...]}} needs a non-empty list of values, got {args!r}."
        return None
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
        return f"{path}: {{{kind}: [lo, hi]}} needs two numbers, got {args!r}."
    lo, hi = args
    if not lo < hi:
        return f"{path}: {{{kind}: [lo, hi]}} needs lo < hi, got {args!r}."
    if kind == "loguniform" and lo <= 0:
        return f"{path}: {{loguniform: [lo, hi]}} needs lo > 0, got {args!r}."
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        return f"{path}: {{randint: [lo, hi]}} needs integers (hi excluded), got {args!r}."
    return None


def _walk(value, path: str = ""):
    """(path, form) of every sampled-value form in a nested mapping."""
    if is_space(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))


def space_errors(config: dict[str, Any], where: str = "config") -> list[str]:
    """A message for each malformed sampled-value form in ``config``."""
    errors = (_form_error(f"{where}.{path}", form) for path, form in _walk(config))
    return [e for e in errors if e]


def has_space(config: dict[str, Any]) -> bool:
    return any(True for _ in _walk(config))


def _ends(form) -> list:
    """The values a form can give that a config check needs: both ends of a range, every choice."""
    ((kind, args),) = form.items()
    if kind == "randint":
        return [args[0], args[1] - 1]
    return list(args)


def first_sample(config):
    """``config`` with every form at its first value (a concrete config to validate)."""
    if is_space(config):
        return first_sample(_ends(config)[0])
    if isinstance(config, dict):
        return {k: first_sample(v) for k, v in config.items()}
    return config


def candidates(config: dict[str, Any]):
    """Concrete configs that together put every form at each of its ends / choices (the
    others at their first value): what must pass the algorithm's validation."""
    yield first_sample(config)
    for path, form in _walk(config):
        for value in _ends(form)[1:]:
            yield first_sample(_replace(config, path.split("."), value))


def _replace(config: dict, keys: list[str], value) -> dict:
    if not keys:
        return value
    return {**config, keys[0]: _replace(config[keys[0]], keys[1:], value)}


def tune_space(config):
    """``config`` with the forms as Tune's search spaces (``grid_search`` stays Tune's dict)."""
    from ray import tune

    if is_space(config):
        ((kind, args),) = config.items()
        if kind == "grid_search":
            return {"grid_search": [tune_space(a) for a in args]}
        if kind == "choice":
            return tune.choice([tune_space(a) for a in args])
        return getattr(tune, kind)(*args)
    if isinstance(config, dict):
        return {k: tune_space(v) for k, v in config.items()}
    return config


def _typed(spec, table: dict, what: str) -> tuple[str | None, dict, str | None]:
    """(type, arguments, error) of a ``search_alg`` / ``scheduler`` value: a name or {type: name, …}."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        return (
            None,
            {},
            f"tune_config.{what} must be one of {', '.join(table)} or {{type: ..., <arguments>}}, got {spec!r}.",
        )
    kind, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    if kind not in table:
        return None, {}, f"tune_config.{what}: unknown type {kind!r}; valid: {', '.join(table)}."
    return kind, kwargs, None


def _argument_errors(cls_path: tuple[str, str], kwargs: dict, what: str) -> list[str]:
    module, name = cls_path[:2]
    cls = getattr(importlib.import_module(module), name)
    valid = [p for p in inspect.signature(cls).parameters if p not in _SET_BY_TUNE_CONFIG]
    return [
        f"tune_config.{what}: {name} has no argument {key!r}; valid: {', '.join(valid)}."
        for key in kwargs
        if key not in valid
    ]


def tune_config_errors(tune_config: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Messages for an invalid ``tune_config`` (with the experiment's ``config``)."""
    if not isinstance(tune_config, dict):
        return [f"tune_config must be a mapping with keys {', '.join(TUNE_CONFIG_KEYS)}, got {tune_config!r}."]
    errors = [
        f"tune_config: unknown key {key!r}; valid: {', '.join(TUNE_CONFIG_KEYS)}."
        for key in tune_config
        if key not in TUNE_CONFIG_KEYS
    ]
    if tune_config.get("mode", DEFAULT_MODE) not in ("max", "min"):
        errors.append(f"tune_config.mode must be 'max' or 'min', got {tune_config['mode']!r}.")
    if not isinstance(tune_config.get("metric", DEFAULT_METRIC), str):
        errors.append(f"tune_config.metric must be a result key such as {DEFAULT_METRIC!r}.")
    for key in ("max_concurrent_trials", "time_budget_s"):
        value = tune_config.get(key)
        if value is not None and (not _is_number(value) or value <= 0):
            errors.append(f"tune_config.{key} must be a number > 0, got {value!r}.")
    search_kind, kwargs, error = _typed(tune_config.get("search_alg", "random"), SEARCH_ALGS, "search_alg")
    kind = search_kind
    if error:
        errors.append(error)
    elif kind is not None:
        module, name, package = SEARCH_ALGS[kind]
        if package and importlib.util.find_spec(package) is None:
            errors.append(f"tune_config.search_alg: {kind} needs the {package} package: {EXTRA}.")
        else:
            errors += _argument_errors((module, name), kwargs, "search_alg")
        if kind != "random" and any(next(iter(f)) == "grid_search" for _, f in _walk(config)):
            errors.append(
                f"tune_config.search_alg: {kind} cannot expand grid_search; use {{choice: [...]}} for that key."
            )
    kind, kwargs, error = _typed(tune_config.get("scheduler", "fifo"), SCHEDULERS, "scheduler")
    if error:
        errors.append(error)
    elif kind is not None:
        errors += _argument_errors(SCHEDULERS[kind], kwargs, "scheduler")
        mutations = kwargs.get("hyperparam_mutations")
        if kind == "pbt" and not (isinstance(mutations, dict) and mutations):
            errors.append(
                "tune_config.scheduler: pbt needs hyperparam_mutations: {key: [values] or {uniform: [lo, hi]}, ...}."
            )
        elif kind == "pbt":
            errors += space_errors(pbt_mutations_as_spaces(mutations), "tune_config.scheduler.hyperparam_mutations")
            if search_kind not in ("random", None):
                errors.append(
                    "tune_config: pbt cannot be combined with a search algorithm (Tune's rule): drop search_alg; "
                    "PBT explores through hyperparam_mutations."
                )
    return errors


def scheduler_type(tune_config: dict[str, Any]) -> str | None:
    """The scheduler's type of a ``tune_config`` ("fifo" when it has none; None when invalid)."""
    return _typed(tune_config.get("scheduler", "fifo"), SCHEDULERS, "scheduler")[0]


def pbt_mutations_as_spaces(mutations: dict[str, Any]) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations`` in the yaml's forms: a list is ``{choice: list}``."""
    return {k: {"choice": v} if isinstance(v, list) else v for k, v in mutations.items()}


def make_search_alg(tune_config: dict[str, Any]):
    """Tune's search algorithm of a validated ``tune_config`` (None: Tune's random / grid).
    Metric and mode go to it (and to the scheduler), not to Tune's ``TuneConfig``, whose
    console output would print every trial's whole config as "Current best trial"."""
    kind, kwargs, _ = _typed(tune_config.get("search_alg", "random"), SEARCH_ALGS, "search_alg")
    if kind == "random" and not kwargs:
        return None
    module, name, _ = SEARCH_ALGS[kind]
    if kind != "random":
        kwargs = dict(zip(("metric", "mode"), metric_and_mode(tune_config))) | kwargs
    return getattr(importlib.import_module(module), name)(**kwargs)


def make_scheduler(tune_config: dict[str, Any]):
    """Tune's trial scheduler of a validated ``tune_config`` (None: FIFO)."""
    kind, kwargs, _ = _typed(tune_config.get("scheduler", "fifo"), SCHEDULERS, "scheduler")
    if kind == "fifo":
        return None
    if kind == "pbt":  # a list stays a list: PBT moves to a neighbouring value; a form is resampled / perturbed
        mutations = {k: v if isinstance(v, list) else tune_space(v) for k, v in kwargs["hyperparam_mutations"].items()}
        kwargs = {"time_attr": "training_iteration", **kwargs, "hyperparam_mutations": mutations}
    module, name = SCHEDULERS[kind]
    return getattr(importlib.import_module(module), name)(
        **dict(zip(("metric", "mode"), metric_and_mode(tune_config))), **kwargs
    )


def metric_and_mode(tune_config: dict[str, Any]) -> tuple[str, str]:
    return tune_config.get("metric", DEFAULT_METRIC), tune_config.get("mode", DEFAULT_MODE)
