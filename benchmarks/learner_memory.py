"""Memory of real-size π0 / π0.5, measured on the CPU, beside the memory plan.

One process per model and algorithm builds the real architecture (random weights, the tiny
tokenizer, ``dtype: bfloat16``: frozen VLM stored in bf16, fp32 master weights for the expert,
bf16 compute) as an RLModule and measures its resident memory (RSS, polled every 2 ms; glibc
returns large blocks to the OS on free) through the steps of a run:

- weights: after building the module;
- rollout per env: the peak of one exploration step of ``--envs`` observations (two 224-px
  cameras) minus that of one observation, per added observation;
- value pass per row: the same for ``prepare_train_batch`` in chunks of ``--rows`` vs 1 row;
- prefix cache per row: the bytes of the kept prefixes (counted exactly);
- optimizer: gradients + AdamW moments, held after the first step;
- activations per sample: the peak of an update on a micro-batch of 2 minus that of 1
  (forward_train, values, a PPO-shaped loss, backward, AdamW step); and, counted exactly, the
  bytes autograd saves for backward (the RSS polling can miss short-lived peaks).

Then the plan's figures (rllib_pirl.memory_plan) for the same parts, and the plan of every GPU
tuned example (the real architecture in place of its checkpoint) on 80 GB and 141 GB GPUs.

    python benchmarks/learner_memory.py [--variants pi0,pi05] [--explorations sde,noise]
    python benchmarks/learner_memory.py --plans-only
    python benchmarks/learner_memory.py --child pi0,noise --activations-only [--dtype float32 --kernel math]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")
GIB = 2**30


class PeakRSS:
    """Peak resident memory of this process while inside the ``with`` block (bytes)."""

    def __enter__(self):
        self.peak, self._run = rss(), True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while self._run:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._run = False
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(
    variant: str, exploration: str, envs: int, rows: int, dtype="bfloat16", kernel="auto", activations_only=False
) -> dict:
    """The measured parts, in GiB (runs in its own process). ``activations_only``: only the
    activations per sample (runs on older versions of the package too, for a before/after);
    ``kernel: math`` forces SDPA's math kernel (what CUDA fell back to before the fused
    attention)."""
    import gymnasium as gym
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    from rllib_pirl.models.pi0 import PiConfig
    from rllib_pirl.rl_module import LATENTS, LOGP, STEPS, FlowRLModule

    torch.set_num_threads(os.cpu_count() or 1)
    image = gym.spaces.Box(0, 255, (224, 224, 3), np.uint8)
    obs_space = gym.spaces.Dict(
        {
            "base_camera": image,
            "hand_camera": image,
            "state": gym.spaces.Box(-1, 1, (9,), np.float32),
            "task_id": gym.spaces.Box(0, 0, (1,), np.int64),
        }
    )
    model_config = {
        "model_class": "rllib_pirl.models.pi0:PiPolicy",
        "model_kwargs": {"pi_config": PiConfig.real(variant).to_dict(), "tokenizer": TOKENIZER, "dtype": dtype},
        "instructions": ["pick up the cube"],
        "action_chunk": 5,
        "exploration": exploration,
        "init_seed": 0,
    }
    act_space = gym.spaces.Box(-1, 1, (5, 7), np.float32)
    out = {}
    base = rss()
    module = FlowRLModule(observation_space=obs_space, action_space=act_space, model_config=model_config)
    out["weights"] = (rss() - base) / GIB

    def observations(n):
        return {k: torch.as_tensor(np.stack([s.sample() for _ in range(n)])) for k, s in obs_space.items()}

    def peak_of(fn) -> int:
        with PeakRSS() as peak:
            fn()
        return peak.peak

    if activations_only:
        obs = observations(2)
        chain = module.forward_exploration({Columns.OBS: obs})
        batch = {Columns.OBS: obs, LATENTS: chain[LATENTS], STEPS: chain[STEPS], LOGP: chain[LOGP]}
        return update_memory(module, batch, kernel)
    from rllib_pirl.models.base import map_context

    one = peak_of(lambda: module.forward_exploration({Columns.OBS: observations(1)}))
    many = peak_of(lambda: module.forward_exploration({Columns.OBS: observations(envs)}))
    out["rollout per env"] = (many - one) / (envs - 1) / GIB
    obs = observations(rows)
    chain = module.forward_exploration({Columns.OBS: obs})
    batch = {Columns.OBS: obs, LATENTS: chain[LATENTS], STEPS: chain[STEPS], LOGP: chain[LOGP]}
    one = peak_of(lambda: module.prepare_train_batch(batch, chunk_size=1, prefix_cache="off"))
    many = peak_of(lambda: module.prepare_train_batch(batch, chunk_size=rows, prefix_cache="off"))
    out["value pass per row"] = (many - one) / (rows - 1) / GIB
    module.prepare_train_batch(batch, chunk_size=rows, prefix_cache="device")
    kept = []
    map_context(lambda x: kept.append(x.numel() * x.element_size()) or x, module._encodings)
    out["prefix cache per row"] = sum(kept) / rows / GIB
    out.update(update_memory(module, batch, kernel))
    return out


def peak_of(fn) -> int:
    with PeakRSS() as peak:
        fn()
    return peak.peak


def update_memory(module, batch, kernel: str) -> dict:
    """``optimizer``: what the first update leaves allocated (gradients, AdamW's moments);
    ``activations per sample``: the peak of an update on a micro-batch of 2 minus that of 1;
    ``saved for backward per sample``: the same for the tensors autograd keeps (counted exactly,
    each storage once, parameters not) (GiB)."""
    import contextlib

    import torch
    from ray.rllib.core.columns import Columns
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rllib_pirl.rl_module import LOGP

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-6)

    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def pack(t):  # what autograd keeps for backward: each storage once, parameters not counted
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def update(n):
        # sliced here, not with rllib_pirl's rows_of: this runs on older versions too (before/after)
        part = {
            k: (v[:n] if not isinstance(v, dict) else {kk: vv[:n] for kk, vv in v.items()}) for k, v in batch.items()
        }
        saved.clear()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, sdpa_kernel([SDPBackend.MATH]) if kernel == "math" else contextlib.nullcontext():
            fwd = module.forward_train(part)
            values = module.compute_values(part, embeddings=fwd[Columns.EMBEDDINGS])
            ratio = torch.exp(fwd[LOGP] - part[LOGP])
            loss = -(ratio.mean(1) * torch.ones(n)).mean() + values.square().mean()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as in the learner

    held = rss()
    update(1)
    optimizer_gib = (rss() - held) / GIB
    peak_one = peak_of(lambda: update(1))
    saved_one = sum(saved.values())
    peak_two = peak_of(lambda: update(2))
    return {
        "optimizer": optimizer_gib,
        "activations per sample": (peak_two - peak_one) / GIB,
        "saved for backward per sample": (sum(saved.values()) - saved_one) / GIB,
    }


def planned(variant: str, exploration: str) -> dict:
    from rllib_pirl.memory_plan import RunShape, _sizes, memory_plan
    from rllib_pirl.models.pi0 import PiConfig

    config = PiConfig.real(variant)
    one = memory_plan(config, RunShape(exploration=exploration, micro_batch=1, rows_per_learner=1, num_envs=1))
    sizes = _sizes(config, RunShape())
    return {
        "weights": one.learner["weights"],
        "rollout per env": one.env_runner["rollout"],
        "prefix cache per row": sizes["kv"] / GIB,
        "value pass per row": sizes["temporaries"] / GIB,
        "optimizer": one.learner["optimizer"],
        "activations per sample": one.learner["activations"],
    }


def yaml_plans() -> list[str]:
    """The plan of every GPU tuned example, the real architecture in place of its checkpoint."""
    import yaml

    from rllib_pirl.memory_plan import plan_errors, plan_with_architecture
    from rllib_pirl.models.pi0 import PiConfig

    lines = []
    for path in sorted(glob.glob(os.path.join(REPO, "tuned_examples", "*.yaml"))):
        with open(path) as f:
            experiments = yaml.safe_load(f)
        for name, spec in experiments.items():
            config = spec.get("config", {})
            kwargs = (config.get("model_config") or {}).get("model_kwargs") or {}
            if "pretrained" not in kwargs or not config.get("num_gpus_per_learner"):
                continue
            variant = "pi05" if "pi05" in os.path.basename(path) else "pi0"
            plan, shares = plan_with_architecture(name, spec, PiConfig.real(variant), TOKENIZER)
            fits = {gib: not plan_errors(plan, gib, *shares) for gib in (80, 141)}
            lines.append(
                f"| {os.path.basename(path)} | learner {plan.learner_total:.1f} GiB (share {shares[0]}), env runner "
                f"{plan.env_runner_total:.1f} GiB (share {shares[1]}) | fits 80 GB: {'yes' if fits[80] else 'NO'}, "
                f"141 GB: {'yes' if fits[141] else 'NO'} |\n    " + plan.table().replace("\n", "\n    ")
            )
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="pi0,pi05")
    p.add_argument("--explorations", default="sde,noise")
    p.add_argument("--envs", type=int, default=2)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--plans-only", action="store_true")
    p.add_argument("--child", help="measure one 'variant,exploration' in this process (prints JSON)")
    p.add_argument("--dtype", default="bfloat16", help="--child: the model's dtype")
    p.add_argument("--kernel", default="auto", choices=["auto", "math"], help="--child: SDPA kernel of the update")
    p.add_argument("--activations-only", action="store_true", help="--child: the update's memory only")
    args = p.parse_args()
    if args.child:
        variant, exploration = args.child.split(",")
        figures = measure(variant, exploration, args.envs, args.rows, args.dtype, args.kernel, args.activations_only)
        print(json.dumps(figures))
        return 0
    if not args.plans_only:
        print("| model | part | measured GiB | plan GiB |")
        for variant in args.variants.split(","):
            for exploration in args.explorations.split(","):
                start = time.perf_counter()
                child = [sys.executable, __file__, "--child", f"{variant},{exploration}"]
                child += ["--envs", str(args.envs), "--rows", str(args.rows)]
                run = subprocess.run(child, capture_output=True, text=True, check=False)
                if run.returncode:
                    print(f"| {variant} {exploration} | FAILED | {run.stderr[-2000:]} |")
                    continue
                measured = json.loads(run.stdout.strip().splitlines()[-1])
                plan = planned(variant, exploration)
                name = f"{variant} Flow-{'SDE' if exploration == 'sde' else 'Noise'}"
                for part, gib in plan.items():
                    print(f"| {name} | {part} | {measured[part]:.3f} | {gib:.3f} |", flush=True)
                saved = measured["saved for backward per sample"]
                print(f"| {name} | saved for backward per sample | {saved:.3f} | |", flush=True)
                print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    print("\nGPU tuned examples (real architecture):")
    for line in yaml_plans():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
