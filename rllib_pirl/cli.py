"""The ``rllib`` command (Ray 2.60 ships none): argparse over the Python API.

  rllib train file FILE.yaml   → rllib_pirl.experiments (prepare_experiments, run_experiment)
  rllib evaluate CHECKPOINT    → rllib_pirl.evaluation.evaluate_checkpoint
  rllib export CHECKPOINT      → rllib_pirl.evaluation.load_algorithm_checkpoint + models.checkpoint.save_model
  rllib demos / sft / tokenizer → rllib_pirl.demos, rllib_pirl.sft, models.pi0.inputs

Bad input raises :class:`~rllib_pirl.errors.UsageError`: one message, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rllib_pirl.errors import UsageError


def cmd_train_file(args) -> int:
    from rllib_pirl.experiments import (
        check_cluster,
        check_resumable,
        gpu_memory_gib,
        prepare_experiments,
        run_experiment,
    )

    stop = None
    if args.stop is not None:
        try:
            stop = json.loads(args.stop)
        except json.JSONDecodeError as e:
            raise UsageError(f"--stop must be a JSON object, e.g. '{{\"training_iteration\": 5}}': {e}") from None
        if not isinstance(stop, dict):
            raise UsageError("--stop must be a JSON object, e.g. '{\"training_iteration\": 5}'.")
    if args.resume and stop is not None:
        raise UsageError("--resume continues experiments with their own stopping criteria: drop --stop.")
    gpu_gib = args.gpu_memory if args.gpu_memory is not None else gpu_memory_gib()
    # everything validated before Tune writes anything
    experiments = prepare_experiments(args.file, stop, gpu_gib)
    resumable = check_resumable(experiments, args.storage_path) if args.resume else {}
    for experiment in experiments:
        if experiment.memory_plan is not None:
            checked = f"fits {gpu_gib:.0f} GiB GPUs" if gpu_gib else "not checked: no GPU here, see --gpu-memory"
            print(f"{experiment.name}: memory plan per GPU process ({checked})\n{experiment.memory_plan.table()}")
    import ray

    connected_before = ray.is_initialized()
    try:
        # Every experiment checked before the first runs; run_experiment need not check again.
        check_cluster(experiments, args.address, resource_check=not args.no_resource_check)
        for experiment in experiments:
            results = run_experiment(
                experiment, args.storage_path, resource_check=False, resume=resumable.get(experiment.name, False)
            )
            failed = [r for r in results if r.error]
            for r in failed:
                print(f"   trial failed: {r.error}", file=sys.stderr)
            if failed:
                return 1
    finally:
        if ray.is_initialized() and not connected_before:
            ray.shutdown()
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from rllib_pirl.evaluation import evaluate_checkpoint

    torch.set_num_threads(1)
    env_config = None
    if args.env_config:
        try:
            env_config = json.loads(args.env_config)
        except json.JSONDecodeError as e:
            raise UsageError(f"--env-config must be a JSON object: {e}") from None
    result = evaluate_checkpoint(
        args.checkpoint,
        env=args.env,
        env_config=env_config,
        episodes=args.episodes,
        seed=args.seed,
        explore=args.explore,
        num_denoise_steps=args.num_denoise_steps,
        x0=args.x0,
        video_dir=args.video_dir,
        workers=args.workers,
    )
    print(result.summary())
    if args.video_dir:
        print(f"videos (first 3 episodes of each task, camera observations only): {args.video_dir}")
    return 0


def cmd_demos(args) -> int:
    from rllib_pirl.demos import generate_demos
    from rllib_pirl.envs.maniskill import SUITE

    tasks = SUITE if args.task == ["suite"] else args.task
    for task in tasks:
        try:
            generate_demos(task, args.num, args.out, control_mode=args.control_mode, num_procs=args.num_procs)
        except (ValueError, RuntimeError) as e:
            raise UsageError(str(e)) from None
    return 0


def tiny_pi_config(args) -> dict:
    """PiConfig.tiny of ``--model`` with ``--chunk``, and ``--pi-config``'s fields replacing
    its own (a sub-size such as ``expert`` is updated key by key)."""
    from rllib_pirl.models.pi0 import PiConfig

    config = PiConfig.tiny(args.model, chunk_size=args.chunk).to_dict()
    try:
        changes = json.loads(args.pi_config) if args.pi_config else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"--pi-config is not valid JSON ({e}): {args.pi_config}") from None
    if not isinstance(changes, dict):
        raise UsageError(f"--pi-config must be a JSON object of PiConfig fields, got {args.pi_config}")
    for key, value in changes.items():
        if key not in config:
            raise UsageError(f"--pi-config: PiConfig has no field {key!r}; fields: {sorted(config)}")
        if isinstance(config[key], dict) and isinstance(value, dict):
            unknown = sorted(set(value) - set(config[key]))
            if unknown:
                raise UsageError(f"--pi-config: {key} has no field {unknown}; fields: {sorted(config[key])}")
            value = {**config[key], **value}
        config[key] = value
    try:
        PiConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--pi-config: {e}") from None
    return config


def check_sft_resume(args) -> None:
    """``--resume`` and the training state in ``--out`` agree (before any demo is read): an
    unfinished SFT is neither overwritten silently nor continued with other options."""
    from rllib_pirl.sft import SFT_STATE, check_same_setup, saved_sft_setup

    if args.save_every < 1:
        raise UsageError(f"--save-every must be >= 1, got {args.save_every}")
    saved = saved_sft_setup(args.out)
    if saved and not args.resume:
        raise UsageError(
            f"--out {args.out} holds an unfinished SFT (saved after step {saved['step']}/{saved['steps']} in "
            f"{SFT_STATE}): add --resume to continue it, or choose another --out."
        )
    if args.resume and not saved:
        raise UsageError(f"--resume: no unfinished SFT in --out {args.out} (no {SFT_STATE}); run without --resume.")
    if args.resume:
        now = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
        check_same_setup(saved, now | {"image_shift": args.image_shift}, f"--resume: the SFT in {args.out}")


def cmd_sft(args) -> int:
    import torch

    from rllib_pirl.sft import demo_counts, load_sft_demos, train_pi_sft, train_sft

    torch.set_num_threads(max(1, args.threads))
    pi = args.model in ("pi0", "pi05")
    if pi and not args.tokenizer and not args.pretrained:
        raise UsageError(
            f"--model {args.model} needs --tokenizer PATH (PaliGemma's SentencePiece model, or a small one for "
            "tiny models: `rllib tokenizer --out OUT.model`) or --pretrained CHECKPOINT with a tokenizer in it."
        )
    if args.pi_config and (not pi or args.pretrained):
        raise UsageError(
            "--pi-config sizes a π0 / π0.5 from random weights: use it with --model pi0/pi05, not --pretrained."
        )
    pi_config = tiny_pi_config(args) if pi and not args.pretrained else None  # bad sizes stop before rendering
    if args.render_procs < 1 or args.image_shift < 0:
        raise UsageError(
            f"--render-procs must be >= 1 and --image-shift >= 0, got {args.render_procs}, {args.image_shift}"
        )
    if pi and args.tokenizer and not os.path.isfile(args.tokenizer):
        raise UsageError(f"--tokenizer {args.tokenizer}: no such file.")
    check_sft_resume(args)
    demos, tasks, camera_size = load_sft_demos(
        args.demos,
        with_cameras=pi,
        tasks=args.tasks.split(",") if args.tasks else None,
        limit_per_task=args.num_demos,
        camera_size=args.camera_size,
        render_procs=args.render_procs,
        obs_mode=args.obs_mode,
    )
    metadata = {"command": "rllib " + " ".join(args.argv), "demo_counts": demo_counts(demos)}
    common = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    common |= {"save_every": args.save_every, "resume": args.resume}
    if pi:
        train_pi_sft(
            demos,
            tasks,
            args.out,
            tokenizer=args.tokenizer,
            variant=args.model,
            pi_config=pi_config,
            pretrained=args.pretrained,
            log_every=max(1, min(1000, args.steps // 20)),
            image_shift=args.image_shift,
            metadata=metadata
            | {"camera_size": camera_size}
            | ({"obs_mode": args.obs_mode} if args.obs_mode != "rgb" else {}),
            **common,
        )
    else:
        hidden = [int(h) for h in args.hidden.split(",")]
        train_sft(
            demos,
            tasks,
            args.out,
            chunk=args.chunk,
            state_dim=args.state_dim,
            hidden_sizes=hidden,
            metadata=metadata,
            **common,
        )
    return 0


def cmd_export(args) -> int:
    """Write the model of an algorithm checkpoint as a model checkpoint (to continue from it
    with ``init_checkpoint``, evaluate it, or load it elsewhere; π0 / π0.5 in the lerobot layout)."""
    from rllib_pirl.evaluation import load_algorithm_checkpoint
    from rllib_pirl.models.checkpoint import save_model

    module, _ = load_algorithm_checkpoint(args.checkpoint)
    metadata = {"from": os.path.abspath(args.checkpoint)}
    if args.layout != "lerobot":
        if not hasattr(module.model, "save_pretrained"):
            raise UsageError(
                f"--layout {args.layout} is for π0 / π0.5 models; this checkpoint holds {type(module.model).__name__}."
            )
        module.model.save_pretrained(args.out, layout=args.layout, metadata=metadata)
    else:
        save_model(module.model, args.out, metadata=metadata)
    print(f"[export] wrote {args.out}")
    return 0


def cmd_tokenizer(args) -> int:
    """A small SentencePiece tokenizer for the tiny π0 / π0.5 (trained on the instructions)."""
    from rllib_pirl.envs.maniskill import TASK_INSTRUCTIONS
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    sentences = sorted(TASK_INSTRUCTIONS.values()) + list(args.sentence or [])
    if args.libero:
        from rllib_pirl.envs.libero import all_instructions

        sentences += all_instructions()
    print(f"[tokenizer] wrote {train_tiny_tokenizer(args.out, sentences, args.vocab_size)}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib",
        description="rllib_pirl's command line: train πRL algorithms (Flow-SDE, Flow-Noise) from tuned-example "
        "yaml files with Ray Tune, and evaluate checkpoints.",
        epilog="examples:\n"
        "  rllib train file tuned_examples/flow_sde_point_reach.yaml\n"
        "  rllib train file tuned_examples/flow_sde_point_reach.yaml --stop '{\"training_iteration\": 5}' "
        "--storage-path /tmp/runs\n"
        "  rllib evaluate /tmp/runs/flow-sde-point-reach/<trial>/checkpoint_000000 --episodes 200\n"
        "  rllib demos --task PickCube-v1 --num 50 --out demos\n"
        "  rllib sft --demos demos --out checkpoints/pickcube_sft --num-demos 50\n"
        "'rllib train file --help' and 'rllib evaluate --help' say more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an algorithm", description="Train an algorithm.")
    train_sub = train.add_subparsers(dest="how", required=True)
    tf = train_sub.add_parser(
        "file",
        help="run the experiments of a tuned-example yaml file with Ray Tune",
        description="Run the experiments of a tuned-example yaml file {name: {env, run, stop, config, "
        "checkpoint_config}} with Ray Tune. Results, TensorBoard files and checkpoints go to "
        "STORAGE_PATH/name.",
    )
    tf.add_argument("file", help="yaml file, e.g. tuned_examples/flow_sde_point_reach.yaml")
    tf.add_argument("--stop", help="JSON stopping criteria replacing the file's, e.g. '{\"training_iteration\": 5}'")
    tf.add_argument("--storage-path", help="where Tune writes results (default ~/ray_results)")
    tf.add_argument(
        "--address",
        help="join the Ray cluster at this address (default: $RAY_ADDRESS, else a local cluster of this machine)",
    )
    tf.add_argument(
        "--no-resource-check",
        action="store_true",
        help="skip refusing trials the cluster can never hold (for clusters with an autoscaler)",
    )
    tf.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GIB",
        help="check π0 / π0.5 memory plans against GPUs of this many GiB (default: this machine's GPU, if any)",
    )
    tf.add_argument(
        "--resume",
        action="store_true",
        help="continue the file's interrupted experiments in STORAGE_PATH/name from their last checkpoints "
        "(finished trials stay finished; unfinished and errored ones continue)",
    )
    tf.set_defaults(func=cmd_train_file)
    ev = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint's deterministic policy",
        description="Run the deterministic (ODE) policy of a checkpoint for N episodes on fixed seeds and print "
        "the mean return and success rate with 95%% intervals.",
    )
    ev.add_argument(
        "checkpoint", help="an algorithm checkpoint (a trial's checkpoint_00000N) or a model checkpoint (rllib sft)"
    )
    ev.add_argument(
        "--episodes", type=int, help="episodes per task (default 100; LIBERO: 50, every initial state of each task)"
    )
    ev.add_argument(
        "--seed", type=int, default=0, help="episode i resets with seed SEED + i (LIBERO: initial state SEED + i)"
    )
    ev.add_argument(
        "--explore",
        action="store_true",
        help="use the stochastic exploration policy instead (an algorithm checkpoint's at the noise its schedules had "
        "reached; episode i's noise seeded with its reset seed, so a rerun repeats it)",
    )
    ev.add_argument("--env-config", help="JSON env_config (overrides the one stored in an algorithm checkpoint)")
    ev.add_argument("--env", help="env name (required for a model checkpoint from `rllib sft`)")
    ev.add_argument("--num-denoise-steps", type=int, default=4, help="K for a model checkpoint (default 4)")
    ev.add_argument(
        "--x0",
        choices=("zeros", "noise"),
        help="where the deterministic policy's chain starts: zeros (the RL policy's default) or noise "
        "(x0 ~ N(0, I), as openpi and lerobot evaluate; seeded per episode, so a rerun repeats it); "
        "default: the checkpoint's inference_x0",
    )
    ev.add_argument("--video-dir", help="write mp4s of the first 3 episodes here (envs with camera observations)")
    ev.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; each loads the model): the tasks of a suite at once, and a task's "
        "seeds split among them when there are more workers than tasks (the same seeds)",
    )
    ev.set_defaults(func=cmd_evaluate)
    de = sub.add_parser(
        "demos",
        help="make ManiSkill expert demos (motion planning, converted to end-effector control)",
        description="Generate N successful expert demos per ManiSkill task offline with ManiSkill's motion-planning "
        "solutions, converted by ManiSkill's replay tool to end-effector control (pd_ee_delta_pos by default) with "
        "state observations "
        "(ManiSkill's .h5/.json trajectory format, under OUT/TASK/motionplanning/).",
    )
    de.add_argument("--task", action="append", required=True, help="task id (repeatable), or 'suite'")
    de.add_argument("--num", type=int, default=50, help="successful demos per task (default 50)")
    de.add_argument("--out", default="demos", help="output folder (default demos/)")
    de.add_argument("--num-procs", type=int, default=2, help="motion-planning processes (default 2)")
    de.add_argument(
        "--control-mode",
        default="pd_ee_delta_pos",
        help="controller the demos are converted to (= env_config.control_mode); pd_ee_delta_pos cannot rotate "
        "the gripper: tasks that need it (LiftPegUpright) need pd_ee_delta_pose",
    )
    de.set_defaults(func=cmd_demos)
    sf = sub.add_parser(
        "sft",
        help="few-shot SFT: flow-matching behaviour cloning on demos",
        description="Train a flow policy by flow matching on demos and write a model checkpoint folder that a "
        "yaml names as the RL starting point (model_config: {init_checkpoint: OUT}): the state MLP policy, or "
        "(--model pi0 / pi05) π0 / π0.5 on the demos re-rendered with the env's cameras, or on LIBERO's "
        "demo files (*_demo.hdf5) with their own cameras.",
    )
    sf.add_argument(
        "--demos",
        nargs="+",
        required=True,
        help="demo .h5 files or folders (from `rllib demos`), or LIBERO demo .hdf5 files / folders",
    )
    sf.add_argument("--out", required=True, help="checkpoint folder to write")
    sf.add_argument("--tasks", help="comma-separated task order (= the env's tasks); default: the demos' tasks")
    sf.add_argument("--num-demos", type=int, help="use at most this many demos per task")
    sf.add_argument("--chunk", type=int, default=5, help="action chunk H (default 5)")
    sf.add_argument("--state-dim", type=int, help="pad states to this size (the env's, for suites)")
    sf.add_argument("--steps", type=int, default=20000, help="gradient steps (default 20000)")
    sf.add_argument("--batch-size", type=int, default=256)
    sf.add_argument("--lr", type=float, default=3e-4)
    sf.add_argument("--hidden", default="256,256,256", help="velocity MLP widths (default 256,256,256)")
    sf.add_argument("--seed", type=int, default=0)
    sf.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    sf.add_argument(
        "--save-every",
        type=int,
        default=1000,
        help="save the training state (weights, optimizer, random streams) in --out every this many steps "
        "(default 1000); the finished checkpoint replaces it",
    )
    sf.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished SFT in --out from its last save, with the options it was started with",
    )
    sf.add_argument(
        "--model",
        default="state",
        choices=["state", "pi0", "pi05"],
        help="state: the MLP state flow policy; pi0 / pi05: a π0 / π0.5 on the demos re-rendered with cameras "
        "(tiny CPU size unless --pretrained), written in the lerobot layout",
    )
    sf.add_argument("--tokenizer", help="π0 / π0.5: SentencePiece tokenizer file")
    sf.add_argument("--pretrained", help="π0 / π0.5: start from this lerobot / openpi checkpoint")
    sf.add_argument(
        "--camera-size",
        type=int,
        help="π0 / π0.5: camera resolution in px (= env_config; ManiSkill default 32, LIBERO default: the files')",
    )
    sf.add_argument(
        "--image-shift",
        type=int,
        default=0,
        help="π0 / π0.5: random-shift augmentation of the camera images by up to this many px (DrQ-style; default 0)",
    )
    sf.add_argument(
        "--pi-config",
        help="π0 / π0.5 from random weights: JSON of PiConfig fields replacing the tiny CPU size's, e.g. "
        '\'{"expert": {"width": 128, "mlp_dim": 256}}\' (a wider action expert)',
    )
    sf.add_argument(
        "--obs-mode",
        default="rgb",
        choices=["rgb", "state+rgb"],
        help="π0 / π0.5 on ManiSkill demos: the env's obs_mode they are rendered in (= env_config.obs_mode): rgb "
        "(state = proprioception, default) or state+rgb (the task's full state with object poses: a control that "
        "need not find the object in the images)",
    )
    sf.add_argument(
        "--render-procs",
        type=int,
        default=2,
        help="π0 / π0.5 on ManiSkill demos: processes that render the demos with cameras the first time (default 2; "
        "software rendering takes one core each)",
    )
    sf.set_defaults(func=cmd_sft)
    ex = sub.add_parser(
        "export",
        help="write the model of an algorithm checkpoint as a model checkpoint",
        description="Write the model of an algorithm checkpoint (a trial's checkpoint_00000N) as a model "
        "checkpoint folder: RL continues from it with model_config: {init_checkpoint: OUT}; π0 / π0.5 are "
        "written as lerobot 0.6 writes them (its from_pretrained loads the folder), or in openpi's layout.",
    )
    ex.add_argument("checkpoint", help="an algorithm checkpoint folder")
    ex.add_argument("--out", required=True, help="the model checkpoint folder to write")
    ex.add_argument(
        "--layout",
        choices=("lerobot", "openpi"),
        default="lerobot",
        help="π0 / π0.5: lerobot's folder (default) or openpi's (its names, config.json, assets/…/norm_stats.json)",
    )
    ex.set_defaults(func=cmd_export)
    tk = sub.add_parser(
        "tokenizer",
        help="train a small SentencePiece tokenizer for tiny π0 / π0.5 models",
        description="Train a small SentencePiece tokenizer (byte fallback, digits, the ManiSkill instructions and "
        "any --sentence) for the tiny CPU π0 / π0.5 models. Real checkpoints need PaliGemma's own tokenizer.",
    )
    tk.add_argument("--out", required=True, help="the .model file to write")
    tk.add_argument("--sentence", action="append", help="extra training sentence (repeatable)")
    tk.add_argument("--vocab-size", type=int, default=400, help="at most the model's vocabulary (default 400)")
    tk.add_argument(
        "--libero", action="store_true", help="also train on the instructions of all LIBERO suites (needs LIBERO)"
    )
    tk.set_defaults(func=cmd_tokenizer)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv  # the command line, recorded in checkpoints
    try:
        return args.func(args)
    except UsageError as e:
        print(f"rllib: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
