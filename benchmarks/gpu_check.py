"""The one-shot GPU check: real-size π0 / π0.5 on ManiSkill's GPU backend, one table.

For the first session that is lent a GPU (one H100/H200, 16 CPU cores, ≤ 8 minutes). Rows:

- ``iteration``: real-size π0 / π0.5 (random weights, bf16 mixed precision, frozen VLM, the
  tiny tokenizer: the vocabulary stays real), Flow-SDE and Flow-Noise, one learner and one
  env runner sharing the GPU as in ``tuned_examples/pi0_maniskill_1gpu.yaml``, PickCube rgb
  224 px with 64 envs (and 320 for π0 Flow-SDE; π0.5 Flow-Noise only with ``--only``
  pi05-noise-64; π0 Flow-SDE with ``ref_kl_coeff`` 0.25, the learner holding the reference
  policy, only with ``--only`` pi0-sde-64-refkl): the second of two iterations — peak GPU
  memory of the learner and of the env runner, learner samples/s, rollout env steps/s
  (policy steps × chunk), build time;
- ``maniskill``: ManiSkill's GPU backend alone with 320 envs (state, rgb): env steps/s with
  zero actions vs sampled through RLlib with the state flow policy.

``--tiny`` runs the same code at CPU-test size (tiny π0, 32 px, ManiSkill's CPU backend with
one env per runner, peak RSS instead of GPU memory): that is how it is tested. A row that
fails prints its error and the table goes on; no row starts after ``--budget-s`` seconds.

    source .vulkan/env.sh   # CPU only
    python benchmarks/gpu_check.py [--tiny] [--only pi0-sde-64,maniskill]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback

import ray
import torch
from maniskill_rollout import raw_steps_per_s, rllib_steps_per_s
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, TIMERS

from rllib_pirl import FlowNoiseConfig, FlowSDEConfig
from rllib_pirl.models.pi0 import PiConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")
CHUNK = 5
ITERATION_CASES = [  # (variant, algorithm, envs, ref_kl_coeff, in the default set)
    ("pi0", "sde", 64, 0.0, True),
    ("pi0", "noise", 64, 0.0, True),
    ("pi05", "sde", 64, 0.0, True),
    ("pi05", "noise", 64, 0.0, False),
    ("pi0", "sde", 320, 0.0, True),
    ("pi0", "sde", 64, 0.25, False),  # the learner keeps π_ref (the suite example's anchor)
]


def peak_memory_gib(*_) -> float:
    """This process's peak memory: GPU memory allocated by torch, else the peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_memory(*_) -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def iteration_config(variant: str, algorithm: str, num_envs: int, tiny: bool, ref_kl: float = 0.0):
    gpu = not tiny
    steps = 4  # policy steps per env per iteration
    cls = FlowSDEConfig if algorithm == "sde" else FlowNoiseConfig
    pi_config = PiConfig.tiny(variant) if tiny else PiConfig.real(variant)
    if variant == "pi05":
        pi_config.max_token_len = 128 if tiny else 200
    envs_per_runner = 1 if tiny else num_envs  # the CPU simulation holds one env per process
    return (
        cls()
        .environment(
            "ManiSkill",
            env_config={
                "task": "PickCube-v1",
                "obs_mode": "rgb",
                "camera_size": 32 if tiny else 224,
                "backend": "gpu" if gpu else "cpu",
                "instructions": ["pick up the cube"],
            },
        )
        .training(
            action_chunk=CHUNK,
            num_denoise_steps=4,
            train_batch_size_per_learner=envs_per_runner * steps,
            minibatch_size=envs_per_runner * steps,
            num_epochs=1,
            micro_batch_size=1 if tiny else 8,
            ref_kl_coeff=ref_kl,
        )
        .env_runners(
            num_env_runners=1,
            num_envs_per_env_runner=envs_per_runner,
            num_gpus_per_env_runner=0.5 if gpu else 0,
            num_cpus_per_env_runner=1,
            rollout_fragment_length=steps,
            sample_timeout_s=900,
            create_local_env_runner=False,
        )
        .learners(num_learners=1, num_gpus_per_learner=0.5 if gpu else 0)
        .rl_module(
            model_config={
                "model_class": "rllib_pirl.models.pi0:PiPolicy",
                "model_kwargs": {
                    "pi_config": pi_config.to_dict(),
                    "tokenizer": TOKENIZER,
                    "dtype": "bfloat16" if gpu else "float32",
                },
            }
        )
        .debugging(seed=0)
    )


def iteration_row(variant: str, algorithm: str, num_envs: int, tiny: bool, ref_kl: float = 0.0) -> dict:
    start = time.perf_counter()
    algo = iteration_config(variant, algorithm, num_envs, tiny, ref_kl).build_algo()
    build_s = time.perf_counter() - start
    try:
        algo.train()  # warm-up: first resets, kernels
        algo.learner_group.foreach_learner(reset_peak_memory)
        algo.env_runner_group.foreach_env_runner(reset_peak_memory, local_env_runner=False)
        result = algo.train()
        learner = result["learners"]["default_policy"]
        timers = result[TIMERS]  # this iteration's own seconds (FlowPPO.training_step)
        policy_steps = result[ENV_RUNNER_RESULTS]["num_env_steps_sampled"]
        learner_peak = [r.get() for r in algo.learner_group.foreach_learner(peak_memory_gib).result_or_errors]
        runner_peak = algo.env_runner_group.foreach_env_runner(peak_memory_gib, local_env_runner=False)
        return {
            "learner GiB": max(learner_peak),
            "env runner GiB": max(runner_peak),
            "learner samples/s": learner["num_module_steps_trained"] / timers[LEARNER_UPDATE_TIMER],
            "env steps/s": policy_steps * CHUNK / timers[ENV_RUNNER_SAMPLING_TIMER],
            "build s": build_s,
        }
    finally:
        algo.stop()


def maniskill_row(obs_mode: str, num_envs: int, tiny: bool) -> dict:
    env_config = {
        "task": "PickCube-v1",
        "obs_mode": obs_mode,
        "camera_size": 32 if tiny else 224,
        "backend": "cpu" if tiny else "gpu",
        "action_chunk": CHUNK,
    }
    chunks = 4 * num_envs if tiny else 20 * num_envs
    raw = raw_steps_per_s(env_config, num_envs, chunks, CHUNK)
    through_rllib, _ = rllib_steps_per_s(env_config, num_envs, chunks, CHUNK, [256, 256])
    return {"raw env steps/s": raw, "RLlib env steps/s": through_rllib, "RLlib / raw": through_rllib / raw}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-test size (tiny π0, ManiSkill CPU backend)")
    p.add_argument("--only", default="", help="comma-separated row names (e.g. pi0-sde-64,maniskill-state)")
    p.add_argument("--budget-s", type=float, default=420, help="start no row after this many seconds (default 420)")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        p.error("no GPU here: run with --tiny for the CPU-size check")
    torch.set_num_threads(1 if args.tiny else 4)
    only = {name for name in args.only.split(",") if name}
    rows = []
    for variant, algorithm, num_envs, ref_kl, default in ITERATION_CASES:
        run = functools.partial(iteration_row, variant, algorithm, num_envs, args.tiny, ref_kl)
        rows.append((f"{variant}-{algorithm}-{num_envs}" + ("-refkl" * (ref_kl > 0)), run, default))
    for obs_mode in ("state", "rgb"):
        rows.append(
            (
                f"maniskill-{obs_mode}",
                functools.partial(maniskill_row, obs_mode, 1 if args.tiny else 320, args.tiny),
                True,
            )
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores), tiny"
    print(f"# gpu_check on {device}, torch {torch.__version__}, ray {ray.__version__}", flush=True)
    failures, begin = 0, time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        for name, run, default in rows:
            if (only and name not in only) or (not only and not default):
                continue
            if time.perf_counter() - begin > args.budget_s:
                print(f"| {name} | skipped: past the --budget-s of {args.budget_s:.0f} s |", flush=True)
                continue
            start = time.perf_counter()
            try:
                figures = run()
                cells = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
                print(f"| {name} | {cells} | {time.perf_counter() - start:.0f} s |", flush=True)
            except Exception as e:  # noqa: BLE001 - the table goes on; the error is the finding
                failures += 1
                print(f"| {name} | FAILED: {type(e).__name__}: {str(e)[:300]} |", flush=True)
                traceback.print_exc()
    finally:
        ray.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
