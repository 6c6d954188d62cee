"""Rendering demos with cameras in one process vs several (`rllib sft --render-procs`).

Copies the first ``--demos`` demos of a state demo file (from `rllib demos`) into two
scratch folders and renders them with ``--camera-size`` px cameras, first in one process,
then in ``--procs`` processes, back to back in this run; prints env steps per second of
each (process start and env creation included) and their ratio.

    source .vulkan/env.sh
    python benchmarks/render_speed.py --source demos --demos 20 --procs 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demos", help="folder of state demos from `rllib demos` (default demos/)")
    parser.add_argument("--demos", type=int, default=20, help="demos to render each way (default 20)")
    parser.add_argument("--procs", type=int, default=2, help="processes of the parallel render (default 2)")
    parser.add_argument("--camera-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from rllib_pirl.demos import demo_files, render_demos

    sources = demo_files([args.source])
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:
        for procs in (1, args.procs):
            folder = os.path.join(scratch, f"procs{procs}")
            for path in sources:  # the state demos and their .json, without any render cache
                target = os.path.join(folder, os.path.relpath(os.path.dirname(path), args.source))
                os.makedirs(target, exist_ok=True)
                for f in (path, os.path.splitext(path)[0] + ".json"):
                    shutil.copy(f, target)
            start = time.perf_counter()
            demos = render_demos([folder], args.camera_size, limit_per_task=args.demos, num_procs=procs)
            seconds = time.perf_counter() - start
            steps = sum(len(d.actions) + 1 for d in demos)
            rates[procs] = steps / seconds
            print(
                f"{procs} process(es): {len(demos)} demos, {steps} frames in {seconds:.1f} s = {rates[procs]:.2f} frames/s"
            )
    print(f"ratio {args.procs} processes / 1: {rates[args.procs] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
