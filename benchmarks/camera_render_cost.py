"""What one ManiSkill camera picture costs on the CPU (software Vulkan, lavapipe), by camera size.

Starts one PickCube-v1 task env (the CPU simulation, both cameras, as the tiny-π0 examples use
it), times its start (process-local: the renderer's first picture included) against a state-only
env, then times ``take_picture`` of one camera at each size, in wall time and in this process's
CPU time (lavapipe renders in threads of this process):

    source .vulkan/env.sh; python benchmarks/camera_render_cost.py [--sizes 16,32,64,128] [--pictures 30]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_s(obs_mode: str, size: int) -> tuple[float, ManiSkillTaskEnv]:
    """Seconds to make a task env and its first observation (the reset inside ManiSkill's make)."""
    config = ManiSkillConfig.from_env_config({"task": "PickCube-v1", "obs_mode": obs_mode, "camera_size": size})
    start = time.perf_counter()
    env = ManiSkillTaskEnv(config)
    return time.perf_counter() - start, env


def picture_ms(env: ManiSkillTaskEnv, pictures: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per picture of the base camera."""
    camera = env.env.unwrapped._sensors["base_camera"].camera
    camera.take_picture()  # this size's first picture
    wall, cpu = time.perf_counter(), cpu_s()
    for _ in range(pictures):
        camera.take_picture()
    return 1000 * (time.perf_counter() - wall) / pictures, 1000 * (cpu_s() - cpu) / pictures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,32,64,128", help="camera sizes in pixels")
    p.add_argument("--pictures", type=int, default=30, help="pictures timed per size")
    args = p.parse_args()
    torch.set_num_threads(1)
    state_s, env = start_s("state", 64)
    env.close()
    print(f"env start, state only          : {state_s:6.1f} s")
    for i, size in enumerate(int(s) for s in args.sizes.split(",")):
        seconds, env = start_s("rgb", size)
        if i == 0:
            print(f"env start, 2 cameras of {size:3d} px : {seconds:6.1f} s (first of this process)")
        wall, cpu = picture_ms(env, args.pictures)
        print(f"one picture, {size:3d} × {size:3d} px      : {wall:6.1f} ms wall, {cpu:6.1f} ms CPU")
        env.close()


if __name__ == "__main__":
    main()
