"""Few-shot SFT: flow-matching behaviour cloning on demos (state flow policy, or π0 /
π0.5 on demos re-rendered with cameras).

Every step t of a demo gives one pair (observation o_t, action chunk a_{t:t+H}); the
chunk is padded past the episode's end by repeating the last action. The policy
learns the velocity field by the conditional flow-matching loss of
:meth:`FlowActionModel.flow_matching_loss`, with observations and actions
normalised by the demos' statistics (stored in the model). The result is a model
checkpoint (``config.json`` + ``model.safetensors``; π0 / π0.5 in the lerobot layout)
that a yaml names as the RL starting point: ``model_config: {init_checkpoint: DIR}``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from rllib_pirl.demos import Demo
from rllib_pirl.models import StateFlowPolicy
from rllib_pirl.models.checkpoint import save_model


def chunk_dataset(demos: Sequence[Demo], tasks: Sequence[str], chunk: int, state_dim: int) -> dict[str, torch.Tensor]:
    """All (state, task id, [camera images,] action chunk) pairs of the demos."""
    states, task_ids, chunks = [], [], []
    images: dict[str, list[np.ndarray]] = {}
    for demo in demos:
        if demo.task not in tasks:
            raise ValueError(f"A demo of {demo.task!r} is not among the tasks {list(tasks)}.")
        if demo.obs.shape[1] > state_dim:
            raise ValueError(f"{demo.task} states have {demo.obs.shape[1]} dims, more than state_dim={state_dim}.")
        steps = len(demo.actions)
        padded = np.concatenate([demo.actions, np.repeat(demo.actions[-1:], chunk - 1, axis=0)])
        obs = np.zeros((steps, state_dim), np.float32)
        obs[:, : demo.obs.shape[1]] = demo.obs[:steps]
        states.append(obs)
        task_ids.append(np.full(steps, list(tasks).index(demo.task), np.int64))
        chunks.append(np.stack([padded[t : t + chunk] for t in range(steps)]))
        for cam, frames in (demo.images or {}).items():
            images.setdefault(cam, []).append(frames[:steps])
    data = {
        "state": torch.from_numpy(np.concatenate(states)),
        "task_id": torch.from_numpy(np.concatenate(task_ids))[:, None],
        "actions": torch.from_numpy(np.concatenate(chunks)),
    }
    data.update({cam: torch.from_numpy(np.concatenate(frames)) for cam, frames in images.items()})
    return data


STD_FLOOR = 1e-2  # the smallest std of the statistics: a dim the demos barely vary is not blown up


def norm_stats(data: dict[str, torch.Tensor]) -> dict[str, dict[str, list[float]]]:
    """mean / std (at least ``STD_FLOOR``) / q01 / q99 of the states and actions (the checkpoint's statistics)."""
    stats = {}
    for name, x in (("state", data["state"]), ("actions", data["actions"].reshape(-1, data["actions"].shape[-1]))):
        x = x.float()
        stats[name] = {
            "mean": x.mean(0).tolist(),
            "std": x.std(0).clamp(min=STD_FLOOR).tolist(),
            "q01": torch.quantile(x, 0.01, dim=0).tolist(),
            "q99": torch.quantile(x, 0.99, dim=0).tolist(),
        }
    return stats


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random-shift augmentation of (B, H, W, C) camera images (DrQ, Kostrikov et al. 2020):
    each image is padded by ``pad`` px on every side (edge pixels repeated) and cropped back
    to H × W at a random offset in [0, 2·pad]² of its own — a shift of up to ``pad`` px."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, padded.shape[1], h, padded.shape[3])
    padded = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, padded.shape[1], h, w)
    return padded.gather(3, cols).permute(0, 2, 3, 1).to(images.dtype)


SFT_STATE = "sft_state.pt"


def save_sft_state(path: str, step: int, setup: dict, model, optimizer, schedule, rng, generator) -> None:
    """Everything :func:`fit` needs to continue after ``step`` (weights, optimizer and schedule,
    the minibatch / noise / shift random streams), written atomically to ``path``."""
    state = {
        "step": step,
        "setup": setup,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng.bit_generator.state,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def saved_sft_setup(out: str) -> dict | None:
    """The setup (and ``step``) of the unfinished SFT whose training state is in ``out``; None
    when there is none. The file is memory-mapped: the weights and optimizer state are not read."""
    path = os.path.join(out, SFT_STATE)
    if not os.path.isfile(path):
        return None
    state = torch.load(path, weights_only=False, mmap=True)
    return {**state["setup"], "step": state["step"]}


def check_same_setup(saved: dict, now: dict, what: str) -> None:
    """``UsageError`` naming every key of ``now`` whose value differs from the ``saved`` setup
    of an unfinished SFT (``what``: where it was saved): a continued run must be the run that
    was started."""
    from rllib_pirl.errors import UsageError

    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if changed:
        raise UsageError(
            f"{what} was started with other options ((saved, now): {changed}): rerun with the options it was "
            "started with, or start afresh in another --out."
        )


def load_sft_state(path: str, setup: dict, model, optimizer, schedule, rng, generator) -> int:
    """Restore what :func:`save_sft_state` wrote into the freshly built ``model`` & co.; returns
    the step it was saved after. A different setup (steps, batch, lr, seed, shift, data, model
    size) is refused: the continued run would not be the run that was started."""
    from rllib_pirl.errors import UsageError

    state = torch.load(path, weights_only=False)
    check_same_setup(state["setup"], setup, f"The SFT saved in {path}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UsageError(f"{path} holds a model of another size than this one (--pi-config / --hidden?): {e}") from None
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    rng.bit_generator.state = state["rng"]
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def fit(
    model,
    data: dict[str, torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int,
    image_shift: int = 0,
    state_path: str | None = None,
    save_every: int = 1000,
    resume: bool = False,
):
    """Minimise the flow-matching loss over random minibatches (AdamW, cosine decay);
    the RL heads (value, noise) and frozen parameters are left alone. ``image_shift``:
    camera images ((B, H, W, 3) uint8 entries) get :func:`random_shift` by up to that
    many px in each minibatch. ``state_path``: every ``save_every`` steps the training state
    is saved there (:func:`save_sft_state`); ``resume`` continues from it, and the steps
    then taken are the ones the uninterrupted run would have taken."""
    if steps < 1 or batch_size < 1 or save_every < 1:
        raise ValueError(f"steps, batch_size and save_every must be >= 1, got {steps}, {batch_size}, {save_every}")
    if image_shift < 0:
        raise ValueError(f"image_shift must be >= 0, got {image_shift}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    cameras = [k for k, v in data.items() if v.dtype == torch.uint8 and v.dim() == 4] if image_shift else []
    n = data["actions"].shape[0]
    heads = {id(p) for p in model.rl_head_parameters()}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    setup = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "image_shift": image_shift, "pairs": n}
    done = 0
    if resume:
        done = load_sft_state(state_path, setup, model, optimizer, schedule, rng, generator)
        print(f"[sft] resumed from {state_path} after step {done}/{steps}", flush=True)
    model.train()
    start, running = time.time(), []
    for step in range(done + 1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, n, batch_size))
        obs = {k: v[idx] for k, v in data.items() if k != "actions"}
        for cam in cameras:
            obs[cam] = random_shift(obs[cam], image_shift, generator)
        loss = model.flow_matching_loss(obs, data["actions"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"[sft] step {step}/{steps}  loss {np.mean(running):.4f}  ({time.time() - start:.0f} s)", flush=True)
            running = []
        if state_path and step % save_every == 0 and step < steps:
            save_sft_state(state_path, step, setup, model, optimizer, schedule, rng, generator)
    model.eval()


def _state_options(out: str, save_every: int, resume: bool) -> dict:
    """fit's options that keep its training state in the checkpoint folder ``out`` (the final
    checkpoint replaces the folder, state included)."""
    os.makedirs(out, exist_ok=True)
    return {"state_path": os.path.join(out, SFT_STATE), "save_every": save_every, "resume": resume}


def _describe(demos, tasks, data, chunk, steps, batch_size) -> None:
    extra = [k for k in data if k not in ("state", "task_id", "actions")]
    print(
        f"[sft] {len(demos)} demos, {data['actions'].shape[0]} (observation, chunk) pairs, tasks {list(tasks)}, "
        f"chunk {chunk}, state {data['state'].shape[1]}, actions {data['actions'].shape[-1]}"
        + (f", cameras {extra} {tuple(data[extra[0]].shape[1:3])}" if extra else "")
        + f", {steps} steps of batch {batch_size}",
        flush=True,
    )


def train_sft(
    demos: Sequence[Demo],
    tasks: Sequence[str],
    out: str,
    chunk: int = 5,
    state_dim: int | None = None,
    steps: int = 20_000,
    batch_size: int = 256,
    lr: float = 3e-4,
    hidden_sizes: Sequence[int] = (256, 256, 256),
    seed: int = 0,
    log_every: int = 1000,
    metadata: dict | None = None,
    save_every: int = 1000,
    resume: bool = False,
) -> StateFlowPolicy:
    """Train a state flow policy by flow matching and write the checkpoint folder ``out``
    (``save_every`` / ``resume``: :func:`fit`'s training state, kept in ``out`` until the end)."""
    if not demos:
        raise ValueError("No demonstrations to train on.")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    torch.manual_seed(seed)
    state_dim = state_dim or max(d.obs.shape[1] for d in demos)
    data = chunk_dataset(demos, tasks, chunk, state_dim)
    data = {k: data[k] for k in ("state", "task_id", "actions")}
    action_dim = data["actions"].shape[-1]
    model = StateFlowPolicy(
        obs_dim=state_dim, horizon=chunk, action_dim=action_dim, hidden_sizes=hidden_sizes, num_tasks=len(tasks)
    )
    stats = norm_stats(data)
    with torch.no_grad():
        model.obs_mean.copy_(torch.tensor(stats["state"]["mean"]))
        model.obs_std.copy_(torch.tensor(stats["state"]["std"]))
        model.action_mean.copy_(torch.tensor(stats["actions"]["mean"]))
        model.action_std.copy_(torch.tensor(stats["actions"]["std"]))
    _describe(demos, tasks, data, chunk, steps, batch_size)
    fit(model, data, steps, batch_size, lr, seed, log_every, **_state_options(out, save_every, resume))
    info = {"tasks": list(tasks), "chunk": chunk, "num_demos": len(demos), "steps": steps, "seed": seed}
    save_model(model, out, metadata={**info, **(metadata or {})})
    print(f"[sft] wrote {out}", flush=True)
    return model


def train_pi_sft(
    demos: Sequence[Demo],
    tasks: Sequence[str],
    out: str,
    tokenizer: str,
    variant: str = "pi0",
    pi_config: dict | None = None,
    pretrained: str | None = None,
    instructions: Sequence[str] | None = None,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 0,
    log_every: int = 100,
    train_vlm: bool = True,
    image_shift: int = 0,
    metadata: dict | None = None,
    save_every: int = 1000,
    resume: bool = False,
):
    """Train π0 / π0.5 by flow matching on demos with camera images (:func:`render_demos`,
    LIBERO's files) and write a checkpoint folder in the lerobot layout. Instructions: given,
    else the demos' own (LIBERO), else ManiSkill's for the tasks. From ``pretrained`` weights, or
    random ones of ``pi_config`` (default: the tiny CPU size). Chunks are the model's
    ``chunk_size``; statistics (mean/std, q01/q99) come from the demos. ``train_vlm``:
    train the VLM too (needed from random weights); the checkpoint is written with
    ``train_expert_only`` on, the RL default. ``image_shift``: random-shift augmentation of
    the camera images by up to that many px (:func:`random_shift`; 0: none). ``save_every`` /
    ``resume``: :func:`fit`'s training state, kept in ``out`` until the checkpoint is written."""
    from rllib_pirl.envs import ENVS
    from rllib_pirl.models.pi0 import PiConfig, PiPolicy

    if not demos or demos[0].images is None:
        raise ValueError("π0 / π0.5 SFT needs demos with camera images (rendered with render_demos).")
    torch.manual_seed(seed)
    cameras = list(demos[0].images)
    state_dim = max(d.obs.shape[1] for d in demos)
    if instructions is None:
        own = {d.task: d.instruction for d in demos if d.instruction}
        instructions = (
            [own[t] for t in tasks]
            if all(t in own for t in tasks)
            else ENVS["ManiSkill"].instructions({"tasks": list(tasks)})
        )
    instructions = list(instructions)
    kwargs = {
        "state_dim": state_dim,
        "camera_keys": cameras,
        "env_action_dim": demos[0].actions.shape[1],
        "tokenizer": tokenizer,
        "instructions": instructions,
        "train_expert_only": not train_vlm,
    }
    if pretrained:
        from rllib_pirl.models.pi0.layouts import load_pretrained

        model = load_pretrained(pretrained, PiPolicy, new_features=True, **kwargs)
        chunk = model.config.chunk_size
        data = chunk_dataset(demos, tasks, chunk, state_dim)
        model.set_norm_stats(norm_stats(data))  # the demos' statistics replace the checkpoint's
    else:
        config = PiConfig.from_dict(pi_config) if pi_config else PiConfig.tiny(variant)
        if state_dim > config.max_state_dim:  # from random weights the state projection can be as wide as needed
            config = PiConfig.from_dict({**config.to_dict(), "max_state_dim": state_dim})
        chunk = config.chunk_size
        data = chunk_dataset(demos, tasks, chunk, state_dim)
        model = PiPolicy(config, norm_stats=norm_stats(data), **kwargs)
    _describe(demos, tasks, data, chunk, steps, batch_size)
    state = _state_options(out, save_every, resume)
    fit(model, data, steps, batch_size, lr, seed, log_every, image_shift=image_shift, **state)
    info = {"tasks": list(tasks), "chunk": chunk, "num_demos": len(demos), "steps": steps, "seed": seed}
    info["image_shift"] = image_shift
    model.init_kwargs["train_expert_only"] = True  # RL fine-tunes the expert (πRL's default)
    model.save_pretrained(out, metadata={**info, **(metadata or {})})
    print(f"[sft] wrote {out}", flush=True)
    return model


def demo_counts(demos: Sequence[Demo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for demo in demos:
        counts[demo.task] = counts.get(demo.task, 0) + 1
    return counts


def tasks_of(demos: Sequence[Demo]) -> list[str]:
    return sorted(demo_counts(demos))


def load_sft_demos(
    paths: Sequence[str],
    *,
    with_cameras: bool,
    tasks: Sequence[str] | None = None,
    limit_per_task: int | None = None,
    camera_size: int | None = None,
    render_procs: int = 1,
    obs_mode: str = "rgb",
) -> tuple[list[Demo], list[str], int | None]:
    """``(demos, task order, camera size)`` for SFT from demo files or folders: ManiSkill's
    (from ``rllib demos``; re-rendered with the env's cameras at ``camera_size`` px, default
    32, when ``with_cameras``, in ``render_procs`` processes, in the env's ``obs_mode``) or LIBERO's (``*_demo.hdf5``, with their own cameras; π0 / π0.5
    only). ``tasks`` (default: the demos' tasks, sorted) must all have demos; bad input raises
    :class:`~rllib_pirl.errors.UsageError`."""
    from rllib_pirl.demos import load_demos, render_demos
    from rllib_pirl.errors import UsageError
    from rllib_pirl.libero_demos import is_libero_file, libero_files, load_libero_demos

    if camera_size is not None and camera_size < 1:
        raise UsageError(f"camera size must be >= 1, got {camera_size}")
    try:
        libero = any(is_libero_file(f) for f in libero_files(paths))
    except FileNotFoundError:
        libero = False
    if libero and obs_mode != "rgb":
        raise UsageError(f"obs_mode {obs_mode!r} is for ManiSkill demos; LIBERO demos carry their own state.")
    if libero and not with_cameras:
        raise UsageError("LIBERO demos train π0 / π0.5 (cameras + 8-D robot state): add --model pi0 or --model pi05.")
    try:
        if libero:
            demos = load_libero_demos(paths, camera_size=camera_size, limit_per_task=limit_per_task)
        else:
            demos = load_demos(paths, limit_per_task=limit_per_task)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(str(e)) from None
    tasks = list(tasks) if tasks else tasks_of(demos)
    missing = [t for t in tasks if t not in demo_counts(demos)]
    if missing:
        raise UsageError(f"No demos of {missing} under {list(paths)}; found {demo_counts(demos)}.")
    if with_cameras and not libero:
        camera_size = camera_size or 32
        demos = [
            d
            for d in render_demos(
                paths, camera_size, limit_per_task=limit_per_task, num_procs=render_procs, obs_mode=obs_mode
            )
            if d.task in tasks
        ]
        if not demos:
            raise UsageError("No demo replayed successfully with cameras; nothing to train on.")
    elif libero:
        camera_size = camera_size or int(demos[0].images["image"].shape[1])
    return [d for d in demos if d.task in tasks], tasks, camera_size
