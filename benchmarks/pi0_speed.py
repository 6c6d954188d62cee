"""π0 / π0.5 sampling cost vs the number of denoising steps K: the prefix KV cache.

Real widths (SigLIP So400m 1152, Gemma 2B 2048, expert 1024, real vocabulary, 224-px
cameras, chunk 50 × 32) at reduced depth (``--depth`` Gemma layers for both, the
vision tower scaled alike: 27/18 × depth), random weights, CPU. One sample =
``encode`` (the VLM prefix, once) + K expert steps. Reported: time(K = 10) / time(K = 1)
with the cache (target ≤ 2×), and the same K = 10 chain recomputing the prefix at every
step (what the cache saves). Ratios are medians of per-round ratios (interleaved).

    python benchmarks/pi0_speed.py --variant pi0 [--depth 2] [--cameras 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flow_speed import interleaved, paired_ratio

from rllib_pirl.flow import sample_chain
from rllib_pirl.models.pi0 import PiConfig, PiPolicy
from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pi0", choices=["pi0", "pi05"])
    p.add_argument("--depth", type=int, default=2, help="Gemma layers (VLM and expert); real: 18")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    real = PiConfig.real(args.variant)
    config = PiConfig.from_dict(
        {
            **real.to_dict(),
            "vlm": {**real.to_dict()["vlm"], "depth": args.depth},
            "expert": {**real.to_dict()["expert"], "depth": args.depth},
            "vision": {**real.to_dict()["vision"], "depth": max(1, round(27 / 18 * args.depth))},
        }
    )
    cams = [f"cam{i}" for i in range(args.cameras)]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tiny_tokenizer(os.path.join(tmp, "tok.model"), ["pick up the red cube"])
        torch.manual_seed(0)
        start = time.time()
        model = PiPolicy(config, state_dim=8, camera_keys=cams, tokenizer=tokenizer, instructions=["pick up the cube"])
        model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.variant}: real widths, depth {args.depth} (vision {config.vision.depth}), {args.cameras} cameras of "
        f"{config.vision.image_size} px, prompt {config.max_token_len} tokens, chunk {config.chunk_size} x "
        f"{config.max_action_dim}, batch {args.batch}, {n_params / 1e9:.2f} B parameters (built in "
        f"{time.time() - start:.0f} s), {args.threads} thread(s)",
        flush=True,
    )
    b = args.batch
    obs = {
        "state": torch.randn(b, 8),
        **{k: torch.randint(0, 256, (b, 224, 224, 3), dtype=torch.uint8) for k in cams},
        "task_id": torch.zeros(b, 1, dtype=torch.long),
    }
    x0 = torch.zeros(b, config.chunk_size, config.max_action_dim)

    def cached(k):
        def run():
            context = model.encode(obs)
            sample_chain(lambda x, t: model.velocity(context, x, t), x0, k)

        return run

    def uncached(k):
        def run():
            sample_chain(lambda x, t: model.velocity(model.encode(obs), x, t), x0, k)

        return run

    with torch.no_grad():
        cached(1)()  # warm-up
        k1, k10 = interleaved([cached(1), cached(10)], args.rounds, 1)
        ratio, t10, t1 = paired_ratio(k10, k1)
        print(f"sample K=1   with prefix cache  {t1:8.3f} s")
        print(f"sample K=10  with prefix cache  {t10:8.3f} s   K=10 / K=1 = {ratio:.3f}x  (target <= 2x)", flush=True)
        (nc10,) = interleaved([uncached(10)], 1, 1)
        print(f"sample K=10  prefix every step  {nc10[0]:8.3f} s   = {nc10[0] / t10:.2f}x the cached K=10 (one run)")


if __name__ == "__main__":
    main()
