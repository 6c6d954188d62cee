"""The Ray cluster a run goes to: joining it, and refusing trials it can never hold.

A Tune trial of an RLlib algorithm asks for one placement group: a bundle for the main
process (with the learner when ``num_learners: 0``), one per env runner, one per learner.
A trial whose bundles do not fit the cluster stays PENDING forever (Tune only repeats a
warning), so :func:`check_resources` compares them with the cluster first and names the
keys to lower.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from typing import Any

from rllib_pirl.errors import UsageError

#: The config keys behind each kind of bundle, by resource ("custom": any other resource).
KEYS = {
    "main process": {
        "CPU": "num_cpus_for_main_process",
        "GPU": "num_gpus_per_learner (num_learners: 0)",
        "custom": "custom_resources_for_main_process",
    },
    "env runner": {
        "CPU": "num_cpus_per_env_runner",
        "GPU": "num_gpus_per_env_runner",
        "custom": "custom_resources_per_env_runner",
    },
    "evaluation env runner": {
        "CPU": "evaluation_config.num_cpus_per_env_runner",
        "GPU": "evaluation_config.num_gpus_per_env_runner",
        "custom": "evaluation_config.custom_resources_per_env_runner",
    },
    "learner": {
        "CPU": "num_cpus_per_learner",
        "GPU": "num_gpus_per_learner",
        "custom": "custom_resources_per_learner",
    },
}


def _address_reachable(address: str, timeout_s: float = 3.0) -> bool:
    """Whether a ``host:port`` (or ``ray://host:port``) address accepts TCP connections."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return True  # "auto", "local" or a form Ray resolves itself
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (else ``$RAY_ADDRESS``; else start a local one).
    An address nobody answers at is a :class:`UsageError` at once (Ray itself would wait
    minutes)."""
    import ray

    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not _address_reachable(address):
        raise UsageError(
            f"No Ray cluster answers at {address!r} ({source}). Start one with "
            "`ray start --head` on the head node (it prints the address to use), or leave the address out to run "
            "on a local cluster of this machine."
        )
    if ray.is_initialized():  # already connected (e.g. from Python)
        return
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as e:
        raise UsageError(f"Cannot join the Ray cluster at {address!r}: {e}") from None


def trial_bundles(algo_cls, config) -> list[tuple[str, dict[str, float]]]:
    """``(kind, bundle)`` of each bundle of one trial's placement group (RLlib's own request:
    main process, env runners, evaluation env runners, learners)."""
    bundles = [dict(b) for b in algo_cls.default_resource_request(config).bundles]
    runners, learners = config.num_env_runners, config.num_learners
    kinds = ["main process"] + ["env runner"] * runners
    kinds += ["evaluation env runner"] * (len(bundles) - 1 - runners - learners) + ["learner"] * learners
    return list(zip(kinds, bundles, strict=True))


def cluster_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def resource_problems(bundles: list[tuple[str, dict[str, float]]], nodes: list[dict[str, float]]) -> list[str]:
    """Why ``bundles`` can never be placed on ``nodes`` (empty if they might be): a resource
    whose total is short, or a bundle that no single node holds."""
    asked: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, bundle in bundles:
        for resource, amount in bundle.items():
            if amount:
                asked[resource][kind].append(amount)
    problems = []
    for resource, by_kind in sorted(asked.items()):
        total = sum(sum(v) for v in by_kind.values())
        have = sum(node.get(resource, 0.0) for node in nodes)
        if total > have + 1e-9:
            parts = " + ".join(
                f"{len(v)} {kind}{'s' if len(v) > 1 else ''} × {_fmt(v[0])} ({_key(kind, resource)})"
                if len(set(v)) == 1
                else f"{kind}s {_fmt(sum(v))}"
                for kind, v in by_kind.items()
            )
            problems.append(f"{resource}: {_fmt(total)} asked = {parts}; the cluster has {_fmt(have)}.")
    for kind, bundle in bundles:
        wanted = {r: a for r, a in bundle.items() if a}
        if not any(all(node.get(r, 0.0) >= a - 1e-9 for r, a in wanted.items()) for node in nodes):
            largest = max(nodes, key=lambda n: tuple(n.get(r, 0.0) for r in wanted), default={})
            keys = ", ".join(_key(kind, r) for r in sorted(wanted))
            problems.append(
                f"one {kind} asks {_fmt_bundle(wanted)} ({keys}), more than any single node has (the largest: "
                f"{_fmt_bundle({r: largest.get(r, 0.0) for r in wanted})})."
            )
    return list(dict.fromkeys(problems))


def check_resources(name: str, algo_cls, config, nodes: list[dict[str, float]] | None = None) -> None:
    """:class:`UsageError` with the arithmetic when one trial of experiment ``name`` can never
    be placed on the connected cluster (or on ``nodes``)."""
    nodes = cluster_nodes() if nodes is None else nodes
    bundles = trial_bundles(algo_cls, config)
    problems = resource_problems(bundles, nodes)
    if problems:
        raise UsageError(
            f"Experiment {name!r}: one trial asks more than this Ray cluster can ever give (it would stay PENDING "
            "forever):\n  " + "\n  ".join(problems) + "\nLower the keys named above, or run on a cluster with more "
            "nodes (--address / RAY_ADDRESS); on a cluster that adds nodes by itself (an autoscaler), pass "
            "--no-resource-check."
        )


def _key(kind: str, resource: str) -> str:
    return KEYS[kind].get(resource, f"{KEYS[kind]['custom']}.{resource}")


def _fmt(x: float) -> str:
    return f"{x:g}"


def _fmt_bundle(bundle: dict[str, Any]) -> str:
    return ", ".join(f"{r} {_fmt(a)}" for r, a in sorted(bundle.items())) or "nothing"
