"""LIBERO's demonstration files (what users download: ``datasets/<suite>/<task>_demo.hdf5``)
as SFT demos.

The format (LIBERO's ``create_dataset.py``; robomimic's layout): one HDF5 file per task,

- ``data`` attributes: ``problem_info`` (JSON with ``language_instruction``),
  ``bddl_file_name`` (…/``<task>.bddl``), ``macros_image_convention`` (``opengl``: images as
  MuJoCo renders them, upside down; ``cv``: flipped vertically), ``env_args``, ``num_demos``;
- ``data/demo_N``: ``actions`` (T, 7), ``states`` (T, sim state), ``rewards``, ``dones``,
  ``obs/agentview_rgb`` and ``obs/eye_in_hand_rgb`` (T, H, W, 3) uint8, ``obs/ee_states``
  (T, 6: eef position and axis-angle), ``obs/gripper_states`` (T, 2), ``obs/joint_states``.

Each demo becomes a :class:`~rllib_pirl.demos.Demo` in the observation format of the
``LIBERO`` env: ``state`` = [ee_states, gripper_states] (8-D), images ``image`` /
``wrist_image`` rotated 180° exactly as the env rotates its renders, the task's name and
instruction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from rllib_pirl.demos import Demo, find_files

#: the dataset's camera → the env's observation key
CAMERA_DATASETS = {"image": "agentview_rgb", "wrist_image": "eye_in_hand_rgb"}


def is_libero_file(path: str) -> bool:
    """An HDF5 file with LIBERO's ``data`` group (``problem_info`` attribute)."""
    import h5py

    if not (os.path.isfile(path) and h5py.is_hdf5(path)):
        return False
    with h5py.File(path, "r") as f:
        return "data" in f and "problem_info" in f["data"].attrs


def libero_files(paths: Sequence[str]) -> list[str]:
    """LIBERO ``*.hdf5`` files named directly or found under folders."""
    return find_files(paths, "*.hdf5", f"No LIBERO demo files (*.hdf5) under {list(paths)}.")


def upright_from(convention: str):
    """The flip that turns a dataset image into the env's (which rotates MuJoCo's render 180°)."""
    if convention == "opengl":  # as rendered: rotate 180°
        return lambda x: x[:, ::-1, ::-1]
    if convention == "cv":  # already flipped vertically: flip horizontally
        return lambda x: x[:, :, ::-1]
    raise ValueError(f"Unknown macros_image_convention {convention!r} (LIBERO writes 'opengl' or 'cv').")


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T, size, size, 3), antialiased bilinear."""
    import torch

    if frames.shape[1:3] == (size, size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _state(obs, path: str, name: str) -> np.ndarray:
    if "ee_states" in obs:
        ee = np.asarray(obs["ee_states"], np.float32)
    elif "ee_pos" in obs and "ee_ori" in obs:
        ee = np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1).astype(np.float32)
    else:
        raise ValueError(f"{path}:{name}: no obs/ee_states (nor ee_pos + ee_ori) to build the 8-D state from.")
    if "gripper_states" not in obs:
        raise ValueError(f"{path}:{name}: no obs/gripper_states to build the 8-D state from.")
    return np.concatenate([ee, np.asarray(obs["gripper_states"], np.float32)], axis=1)


def load_libero_demos(
    paths: Sequence[str], camera_size: int | None = None, limit_per_task: int | None = None
) -> list[Demo]:
    """Read LIBERO demo files into :class:`Demo` s (task = the bddl file's name, with its
    instruction and camera images; ``camera_size`` resizes the images)."""
    import h5py

    demos: list[Demo] = []
    counts: dict[str, int] = {}
    for path in libero_files(paths):
        with h5py.File(path, "r") as f:
            if "data" not in f or "problem_info" not in f["data"].attrs:
                raise ValueError(f"{path} is not a LIBERO demo file (no data group with a problem_info attribute).")
            data = f["data"]
            instruction = json.loads(data.attrs["problem_info"])["language_instruction"]
            task = os.path.splitext(os.path.basename(str(data.attrs["bddl_file_name"])))[0]
            flip = upright_from(str(data.attrs.get("macros_image_convention", "opengl")))
            names = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
            for name in names:
                if limit_per_task is not None and counts.get(task, 0) >= limit_per_task:
                    break
                group, obs = data[name], data[name]["obs"]
                actions = np.asarray(group["actions"], np.float32)
                if actions.ndim != 2 or actions.shape[1] != 7:
                    raise ValueError(f"{path}:{name}: actions of shape {actions.shape}, LIBERO's are (T, 7).")
                images = {}
                for key, dataset in CAMERA_DATASETS.items():
                    if dataset not in obs:
                        raise ValueError(f"{path}:{name}: no obs/{dataset} camera images.")
                    frames = np.ascontiguousarray(flip(np.asarray(obs[dataset], np.uint8)))
                    images[key] = resize_frames(frames, camera_size) if camera_size else frames
                state = _state(obs, path, name)
                if not len(state) == len(actions) == len(images["image"]):
                    raise ValueError(
                        f"{path}:{name}: {len(actions)} actions but {len(state)} states / "
                        f"{len(images['image'])} images."
                    )
                demos.append(Demo(task, state, actions, images=images, instruction=instruction))
                counts[task] = counts.get(task, 0) + 1
    return demos
