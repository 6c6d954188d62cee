"""Bytes and seconds of one learner → env runner weight sync, before/after the trainable-only state.

RLlib sends ``module.get_state(inference_only=True)`` to every env runner after each update.
"before": RLlib's stock ``TorchRLModule.get_state`` / ``set_state`` (the whole state dict,
the frozen VLM included); "after": rllib_pirl's (trainable parameters and buffers, plus a
fingerprint of the frozen ones). One sync = get_state → pickle (what Ray serialises) →
unpickle → set_state on a second module, in one process (the network transfer itself, per env
runner, scales with the bytes). A π0 / π0.5 at real widths (SigLIP 1152, Gemma 2B 2048, expert
1024, the real vocabulary) at reduced depth, Flow-SDE (its noise head frozen too) or Flow-Noise;
the full-size figures are computed from the real architecture built on the meta device.

    python benchmarks/weight_sync.py [--variant pi0] [--depth 1] [--exploration sde] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.rl_module.torch import TorchRLModule

from rllib_pirl.models.pi0 import PiConfig, PiPolicy
from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer
from rllib_pirl.rl_module import FlowRLModule


def reduced(variant: str, depth: int) -> PiConfig:
    real = PiConfig.real(variant).to_dict()
    return PiConfig.from_dict(
        {
            **real,
            "vlm": {**real["vlm"], "depth": depth},
            "expert": {**real["expert"], "depth": depth},
            "vision": {**real["vision"], "depth": max(1, round(27 / 18 * depth))},
        }
    )


def spaces(state_dim: int = 8, size: int = 224):
    image = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    obs = gym.spaces.Dict(
        {
            "base_camera": image,
            "hand_camera": image,
            "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            "task_id": gym.spaces.Box(0, 0, (1,), np.int64),
        }
    )
    return obs, gym.spaces.Box(-1, 1, (5, 7), np.float32)


def make_module(config: PiConfig, tokenizer: str, exploration: str) -> FlowRLModule:
    obs, act = spaces()
    model_config = {
        "model_class": "rllib_pirl.models.pi0:PiPolicy",
        "model_kwargs": {"pi_config": config.to_dict(), "tokenizer": tokenizer},
        "instructions": ["pick up the cube"],
        "exploration": exploration,
        "init_seed": 0,
    }
    return FlowRLModule(observation_space=obs, action_space=act, model_config=model_config, inference_only=True)


def one_sync(get_state, set_state, sender, receiver) -> tuple[int, float]:
    start = time.perf_counter()
    blob = pickle.dumps(get_state(sender, inference_only=True), protocol=5)
    set_state(receiver, pickle.loads(blob))
    return len(blob), time.perf_counter() - start


def trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def full_size(variant: str, tokenizer: str, exploration: str) -> tuple[int, int]:
    """(all parameter bytes, trainable bytes) of the real architecture in fp32 (meta device)."""
    with torch.device("meta"):
        model = PiPolicy(PiConfig.real(variant), state_dim=8, camera_keys=["base_camera"], tokenizer=tokenizer)
    if exploration == "sde":
        model.noise_head.requires_grad_(False)
    total = sum(p.numel() * 4 for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return total, trainable


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pi0", choices=["pi0", "pi05"])
    p.add_argument("--depth", type=int, default=1, help="Gemma layers (VLM and expert); real: 18")
    p.add_argument("--exploration", default="sde", choices=["sde", "noise"])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tiny_tokenizer(os.path.join(tmp, "tok.model"), ["pick up the cube"])
        config = reduced(args.variant, args.depth)
        sender, receiver = (
            make_module(config, tokenizer, args.exploration),
            make_module(config, tokenizer, args.exploration),
        )
        total_gb, trainable_gb = full_size(args.variant, tokenizer, args.exploration)
    with torch.no_grad():  # the sender "trained": its trainable weights differ from the receiver's
        for p_ in sender.parameters():
            if p_.requires_grad:
                p_.add_(0.01)
    params = sum(p_.numel() for p_ in sender.model.parameters())
    print(
        f"{args.variant} ({args.exploration}), real widths at depth {args.depth} (vision {config.vision.depth}): "
        f"{params / 1e6:.0f}M parameters, {trainable_bytes(sender.model) / 2**20:.0f} MiB trainable (fp32)",
        flush=True,
    )
    rows = {"before": [], "after": []}
    methods = {
        "before": (TorchRLModule.get_state, TorchRLModule.set_state),
        "after": (FlowRLModule.get_state, FlowRLModule.set_state),
    }
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):  # interleaved
            rows[name].append(one_sync(*methods[name], sender, receiver))
    assert all(torch.equal(v, sender.state_dict()[k]) for k, v in receiver.state_dict().items())
    tb = trainable_bytes(sender.model)
    for name in ("before", "after"):
        size = rows[name][0][0]
        seconds = statistics.median(s for _, s in rows[name])
        print(f"{name:6s}: {size / 2**20:8.1f} MiB per sync ({size / tb:.3f}x the trainable bytes), {seconds:.3f} s")
    ratios = [b[1] / a[1] for b, a in zip(rows["before"], rows["after"], strict=True)]
    print(
        f"after/before: bytes {rows['after'][0][0] / rows['before'][0][0]:.4f}, "
        f"time {1 / statistics.median(ratios):.4f} (median of {args.rounds} interleaved rounds)"
    )
    print(
        f"full size ({args.variant}, fp32, computed): {total_gb / 2**30:.2f} GiB per sync before, "
        f"{trainable_gb / 2**30:.2f} GiB after ({trainable_gb / total_gb:.3f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
