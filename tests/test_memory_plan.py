"""The memory plan of π0 / π0.5 runs on GPUs: parameter counts, the check before Ray starts,
and the GPU tuned examples' plans."""

import glob
import os

import pytest
import torch
import yaml

from rllib_pirl.errors import UsageError
from rllib_pirl.memory_plan import RunShape, memory_plan, parameter_counts, plan_errors
from rllib_pirl.models.pi0 import PiConfig, PiPolicy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "checkpoints", "tiny_tokenizer.model")


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_parameter_counts_are_the_real_models(variant):
    """Counted from the architecture = the parameters of the real π0 / π0.5 (built on the meta device)."""
    config = PiConfig.real(variant)
    with torch.device("meta"):
        model = PiPolicy(config, state_dim=8, camera_keys=["base_camera"], tokenizer=TOKENIZER)
    counts = parameter_counts(config)
    assert counts["vlm"] == sum(p.numel() for p in model.backbone.paligemma.parameters())
    assert counts["expert"] == sum(p.numel() for p in model.backbone.gemma_expert.parameters())
    heads = {id(p) for p in model.rl_head_parameters()}
    rest = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone") and id(p) not in heads)
    assert counts["projections"] == rest


def test_plan_parts_follow_the_keys():
    config = PiConfig.real("pi0")
    base = memory_plan(config, RunShape(micro_batch=8))
    assert memory_plan(config, RunShape(micro_batch=16)).learner["activations"] == pytest.approx(
        2 * base.learner["activations"]
    )
    noise = memory_plan(config, RunShape(micro_batch=8, exploration="noise", num_denoise_steps=4))
    assert noise.learner["activations"] == pytest.approx(4 * base.learner["activations"])
    assert memory_plan(config, RunShape(micro_batch=8, prefix_cache="cpu")).learner["prefix cache"] == 0
    fp32 = memory_plan(config, RunShape(micro_batch=8, dtype="float32"))
    assert fp32.learner["weights"] > 1.5 * base.learner["weights"]
    counts = parameter_counts(config)
    anchored = memory_plan(config, RunShape(micro_batch=8, reference=True))  # ref_kl_coeff > 0
    assert anchored.learner["reference"] == pytest.approx((counts["expert"] + counts["projections"]) * 6 / 2**30)
    assert anchored.learner_total == pytest.approx(base.learner_total + anchored.learner["reference"])
    assert "reference" not in base.learner
    errors = plan_errors(base, gpu_gib=16, learner_share=1, runner_share=0.5)
    assert len(errors) == 2 and "too much" in errors[0] and "num_gpus_per_env_runner=0.5" in errors[1]


def write_gpu_yaml(tmp_path, **config):
    spec = {
        "big": {
            "env": "ManiSkill",
            "run": "FlowNoise",
            "config": {
                "env_config": {"task": "PickCube-v1", "obs_mode": "rgb", "instructions": ["pick up the cube"]},
                "num_env_runners": 1,
                "num_envs_per_env_runner": 64,
                "num_gpus_per_env_runner": 0.5,
                "num_learners": 1,
                "num_gpus_per_learner": 0.5,
                "train_batch_size_per_learner": 1280,
                "minibatch_size": 1280,
                "micro_batch_size": 256,
                "model_config": {
                    "model_class": "rllib_pirl.models.pi0:PiPolicy",
                    "model_kwargs": {
                        "pi_config": PiConfig.real("pi0").to_dict(),
                        "tokenizer": TOKENIZER,
                        "dtype": "bfloat16",
                    },
                },
                **config,
            },
        }
    }
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_a_plan_that_does_not_fit_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import rllib_pirl.experiments
    from rllib_pirl.cli import main
    from rllib_pirl.experiments import prepare_experiments

    path = write_gpu_yaml(tmp_path)
    with pytest.raises(UsageError) as error:
        prepare_experiments(path, gpu_gib=80)
    message = str(error.value)
    assert "'big'" in message and "learner needs" in message and "GiB too much" in message
    assert "activations" in message and "lower micro_batch_size" in message

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI went on to join a Ray cluster")

    monkeypatch.setattr(rllib_pirl.experiments, "check_cluster", refuse)
    assert main(["train", "file", path, "--gpu-memory", "80"]) == 2


def test_a_plan_that_fits_is_printed(tmp_path, capsys):
    from rllib_pirl.experiments import prepare_experiments

    (experiment,) = prepare_experiments(write_gpu_yaml(tmp_path, micro_batch_size=16), gpu_gib=80)
    plan = experiment.memory_plan
    assert plan.learner_total < 40 and plan.env_runner_total < 40
    assert plan.learner["activations"] == pytest.approx(
        16
        / 256
        * memory_plan(PiConfig.real("pi0"), RunShape(exploration="noise", micro_batch=256)).learner["activations"]
    )
    assert "learner" in plan.table() and "env runner" in plan.table()


def _is_gpu_example(path: str) -> bool:
    with open(path) as f:
        text = f.read()
    return "num_gpus_per_learner" in text and "pretrained: $" in text


GPU_EXAMPLES = [p for p in sorted(glob.glob(os.path.join(REPO, "tuned_examples", "*.yaml"))) if _is_gpu_example(p)]


def test_there_are_gpu_examples():
    assert len(GPU_EXAMPLES) == 11


@pytest.mark.parametrize("path", GPU_EXAMPLES, ids=os.path.basename)
def test_gpu_examples_fit_an_80gb_gpu_by_their_plan(path):
    """Each GPU tuned example, with the real architecture in place of its checkpoint, fits
    the 80 GB GPUs it is written for (H100 / A100-80G)."""
    from rllib_pirl.memory_plan import plan_with_architecture

    with open(path) as f:
        experiments = yaml.safe_load(f)
    for name, spec in experiments.items():
        variant = "pi05" if "pi05" in os.path.basename(path) else "pi0"
        plan, shares = plan_with_architecture(name, spec, PiConfig.real(variant), TOKENIZER)
        assert not plan_errors(plan, 80, *shares), plan.table()


def test_a_dtype_that_does_not_exist_is_refused_before_ray_starts(tmp_path):
    from rllib_pirl.experiments import prepare_experiments

    kwargs = {"pi_config": PiConfig.tiny().to_dict(), "tokenizer": TOKENIZER, "dtype": "float16"}
    path = write_gpu_yaml(
        tmp_path, model_config={"model_class": "rllib_pirl.models.pi0:PiPolicy", "model_kwargs": kwargs}
    )
    with pytest.raises(UsageError, match=r"model_kwargs.dtype must be one of \('float32', 'bfloat16'\)"):
        prepare_experiments(path)
