"""π0 / π0.5 checkpoints that real tools wrote: lerobot 0.6.1's own folders (tests/fixtures,
with lerobot's reference outputs), and the same weights laid out as openpi and RLinf lay
them out. Each loads to the outputs its tool gives, or is refused with the reason."""

import json
import os
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rllib_pirl.errors import UsageError
from rllib_pirl.experiments import config_dict_for_rllib
from rllib_pirl.models.pi0 import CheckpointMismatch, PiPolicy, load_pretrained, read_pretrained, save_pretrained
from rllib_pirl.models.pi0.policy import PiContext

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "lerobot-0.6.1")
TOKENIZER = os.path.join(FIXTURES, "tokenizer.model")
#: lerobot's config.json does not record SigLIP's head count (it hard-codes So400m's 16).
HEADS = {"vision": {"num_heads": 2}}
VARIANTS = ["pi0", "pi05"]
EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def load(folder, **kwargs):
    kwargs.setdefault("pi_config", HEADS)
    return load_pretrained(folder, tokenizer=TOKENIZER, verbose=False, **kwargs).eval()


def fixture(variant):
    inputs = read_json(os.path.join(FIXTURES, f"{variant}_inputs.json"))
    ref = load_file(os.path.join(FIXTURES, f"{variant}_ref.safetensors"))
    proc = load_file(os.path.join(FIXTURES, f"{variant}_proc.safetensors"))
    return inputs, ref, proc


def raw_images(inputs, proc, names=None):
    return {name: proc["raw_images"][:, i] for i, name in enumerate(names or inputs["cameras"])}


def assert_end_to_end(model, variant, cameras=None):
    """raw images + raw state + instructions → env actions, from both of lerobot's x0."""
    inputs, _, proc = fixture(variant)
    for x0 in ("zero", "noise"):
        actions = model.predict_action_chunk(
            raw_images(inputs, proc, cameras), proc["raw_state"], inputs["texts"], x0=proc[f"e2e_x0_{x0}"]
        )
        reference = proc[f"e2e_actions_{x0}"]
        assert actions.shape == reference.shape
        assert (actions - reference).abs().max().item() <= 1e-4, x0


# -- lerobot's own folders ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobot_folder_matches_lerobot_model(variant):
    """Model level: lerobot's sample_actions (5 Euler steps) and per-element loss on fixed inputs."""
    model = load(os.path.join(FIXTURES, variant))
    _, ref, _ = fixture(variant)
    from rllib_pirl.flow import sample_chain

    b, cams = ref["images"].shape[:2]
    with torch.no_grad():
        cache = model.backbone.prefix(
            ref["images"], torch.ones(b, cams, dtype=torch.bool), ref["tokens"], ref["masks"].bool()
        )
        context = PiContext(cache, ref["state"])
        chain = sample_chain(lambda x, t: model.velocity(context, x, t), ref["noise"], 5)
        assert (chain.actions - ref["actions"]).abs().max().item() <= 1e-4
        t = ref["train_time"]
        x_t = t[:, None, None] * ref["noise"] + (1 - t[:, None, None]) * ref["train_actions"]
        v, _ = model.velocity(context, x_t, t)
        loss = (v - (ref["noise"] - ref["train_actions"])) ** 2
        assert (loss - ref["loss"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobot_processors_are_reproduced(variant):
    """State normalisation, prompt tokens (π0.5: with the discretised state, out-of-range
    states included) and the un-normalised actions equal lerobot's processors' outputs."""
    model = load(os.path.join(FIXTURES, variant))
    inputs, ref, proc = fixture(variant)
    with torch.no_grad():
        state = model.normalize_state(proc["raw_state"])
        assert (state[:, : inputs["state_dim"]] - proc["norm_state"]).abs().max().item() <= 1e-5
        tokens, mask = model.prompt_tokens(inputs["texts"], state)
        assert torch.equal(tokens, proc["tokens"]) and torch.equal(mask, proc["mask"].bool())
        actions = model.unnormalize_actions(ref["actions"])[..., : inputs["action_dim"]]
        assert (actions - proc["env_actions"]).abs().max().item() <= 1e-5
    if variant == "pi05":  # states below q01 give bin -1 (not clipped to 0, as lerobot and openpi)
        assert proc["norm_state"].min() < -1
        assert "-1" in model.tokenizer.sp.decode(tokens[0][mask[0]].tolist()).split("State: ")[1].split(";")[0].split()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobot_end_to_end(variant):
    assert_end_to_end(load(os.path.join(FIXTURES, variant)), variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobot_folder_is_read_whole(variant, capsys):
    """Everything the folder says: features, chunk, steps, modes and ε, prompt, skipped keys."""
    info = read_pretrained(os.path.join(FIXTURES, variant), HEADS)
    assert info.format == "lerobot" and info.version.startswith("lerobot 0.5+")
    c = info.pi_config
    assert (c.variant, c.chunk_size, c.max_state_dim, c.max_action_dim) == (variant, 8, 32, 8)
    assert c.max_token_len == (48 if variant == "pi0" else 128) and c.vision.image_size == 32
    assert info.cameras == ["observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb"]
    model = load_pretrained(os.path.join(FIXTURES, variant), tokenizer=TOKENIZER, pi_config=HEADS)
    line = capsys.readouterr().out
    assert line.startswith("[pi0] lerobot 0.5+") and "horizon 8 (executes 8)" in line and "state 10 / actions 4" in line
    assert (model.state_dim, model.env_action_dim, model.num_inference_steps) == (10, 4, 10)
    modes = ("mean_std",) * 2 if variant == "pi0" else ("quantile",) * 2
    assert (model.norm_modes["state"], model.norm_modes["actions"]) == modes
    assert (model.norm_convention, model.norm_eps) == ("lerobot", 1e-8)
    assert model.prompt_format == ("task_lerobot" if variant == "pi0" else "task_state")
    assert list(model.skipped_keys) == [LM_HEAD, "paligemma_with_expert.gemma_expert.lm_head.weight"]


def test_the_stale_lm_head_is_not_the_embedding(tmp_path):
    """lerobot ≥ 0.5 keeps a stale lm_head beside embed_tokens (here: random, 0.13 apart): the
    file whose embedding is that lm_head acts differently, so embed_tokens must be the one loaded."""
    folder = copy_fixture(tmp_path, "pi0")
    weights = load_file(os.path.join(folder, "model.safetensors"))
    weights.pop("model." + EMBED)  # a file with lm_head only (lerobot's hub base files) embeds with it
    save_file(weights, os.path.join(folder, "model.safetensors"))
    inputs, _, proc = fixture("pi0")
    actions = load(folder).predict_action_chunk(
        raw_images(inputs, proc), proc["raw_state"], inputs["texts"], x0=proc["e2e_x0_zero"]
    )
    assert (actions - proc["e2e_actions_zero"]).abs().max().item() > 1e-2


def copy_fixture(tmp_path, variant, name=None):
    folder = str(tmp_path / (name or variant))
    shutil.copytree(os.path.join(FIXTURES, variant), folder)
    for f in os.listdir(folder):
        os.chmod(os.path.join(folder, f), 0o644)
    return folder


def edit_json(path, **changes):
    write_json(path, {**read_json(path), **changes})


# -- openpi and RLinf layouts of the same weights ------------------------------------------------
def openpi_weights(variant):
    """The fixture's weights under openpi's names: no ``model.`` prefix, the embedding stored
    once as the tied lm_head."""
    weights = {
        k.removeprefix("model."): v for k, v in load_file(os.path.join(FIXTURES, variant, "model.safetensors")).items()
    }
    weights[LM_HEAD] = weights.pop(EMBED)
    return weights


def fixture_norm_stats(variant):
    """The fixture's statistics as openpi's norm_stats.json holds them."""
    flat = load_file(os.path.join(FIXTURES, variant, "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    return {
        ours: {s: flat[f"{theirs}.{s}"].tolist() for s in ("mean", "std", "q01", "q99")}
        for ours, theirs in (("state", "observation.state"), ("actions", "action"))
    }


def make_openpi_folder(tmp_path, variant, stats_dir="assets/physical-intelligence/libero", extra=None, name=None):
    folder = tmp_path / (name or f"openpi_{variant}")
    os.makedirs(folder)
    save_file({**openpi_weights(variant), **(extra or {})}, str(folder / "model.safetensors"))
    config = {
        "action_dim": 8,
        "action_horizon": 8,
        "paligemma_variant": "gemma_2b",
        "action_expert_variant": "gemma_300m",
        "precision": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    if stats_dir:
        os.makedirs(folder / stats_dir)
        (folder / stats_dir / "norm_stats.json").write_text(json.dumps({"norm_stats": fixture_norm_stats(variant)}))
    return str(folder)


CAMERAS = ["base_0_rgb", "left_wrist_0_rgb"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_openpi_folder_acts_like_lerobot(tmp_path, variant):
    """openpi's layout: statistics two folders deep under assets/, action_horizon 8 (not 50),
    its ε — the same env actions as lerobot's pipeline within 1e-4."""
    folder = make_openpi_folder(tmp_path, variant)
    info = read_pretrained(folder, HEADS)
    assert info.format == "openpi" and info.pi_config.chunk_size == 8 and info.cameras is None
    assert info.stats_source == os.path.join("assets", "physical-intelligence", "libero", "norm_stats.json")
    with pytest.raises(CheckpointMismatch, match="does not record its cameras"):
        load(folder, relative_actions=False)
    extra = {}
    if variant == "pi0":  # its statistics' asset id is pi0_libero's, trained with relative arm actions
        with pytest.raises(
            CheckpointMismatch, match=r"looks like openpi's pi0_libero .*model_kwargs.relative_actions: \[true"
        ):
            load(folder, camera_keys=CAMERAS)
        extra = {"relative_actions": False}  # these weights predict absolute actions
    model = load(folder, camera_keys=CAMERAS, **extra)
    assert (model.norm_convention, model.norm_eps, model.state_dim, model.env_action_dim) == ("openpi", 1e-6, 10, 4)
    assert model.prompt_format == ("task" if variant == "pi0" else "task_state")
    assert_end_to_end(model, variant, CAMERAS)


def test_rlinf_folder_and_its_rl_heads(tmp_path):
    """RLinf's πRL layout: statistics at <repo_id>/norm_stats.json; its value head (a ReLU MLP
    of another shape) is skipped and reported, a noise head of our shape is loaded."""
    probe = load(make_openpi_folder(tmp_path, "pi0", name="probe"), camera_keys=CAMERAS, relative_actions=False)
    noise_head = {k: torch.randn_like(v) for k, v in probe.state_dict().items() if k.startswith("noise_head.")}
    value_head = {"value_head.mlp.0.weight": torch.randn(512, 32), "value_head.mlp.0.bias": torch.randn(512)}
    folder = make_openpi_folder(
        tmp_path, "pi0", stats_dir="physical-intelligence/maniskill", extra={**noise_head, **value_head}, name="rlinf"
    )
    model = load(folder, camera_keys=CAMERAS)
    assert read_pretrained(folder, HEADS).format == "rlinf"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in noise_head.items())
    assert "value_head.*" in model.skipped_keys and not any(k.startswith("noise_head") for k in model.skipped_keys)
    assert_end_to_end(model, "pi0", CAMERAS)


def test_stateless_pi05_prompt(tmp_path):
    """openpi's π0.5 with discrete_state_input=False (RLinf's ManiSkill π0.5): prompt_format
    task — π0's prompt, no state in it; the state then changes nothing."""
    model = load(make_openpi_folder(tmp_path, "pi05"), camera_keys=CAMERAS, prompt_format="task")
    inputs, _, proc = fixture("pi05")
    state = model.normalize_state(proc["raw_state"])
    tokens, mask = model.prompt_tokens(inputs["texts"], state)
    sp = model.tokenizer.sp
    expected = sp.encode(inputs["texts"][0], add_bos=True) + sp.encode("\n")
    assert tokens[0][mask[0]].tolist() == expected
    images = raw_images(inputs, proc, CAMERAS)
    x0 = proc["e2e_x0_zero"]
    a = model.predict_action_chunk(images, proc["raw_state"], inputs["texts"], x0=x0)
    b = model.predict_action_chunk(images, proc["raw_state"] + 0.5, inputs["texts"], x0=x0)
    assert torch.allclose(a, b, atol=1e-6)
    stateful = load(make_openpi_folder(tmp_path, "pi05", name="stateful"), camera_keys=CAMERAS)
    c = stateful.predict_action_chunk(images, proc["raw_state"] + 0.5, inputs["texts"], x0=x0)
    assert (b - c).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY"])
def test_every_lerobot_normalisation_mode(tmp_path, mode):
    """Each of lerobot's modes with lerobot's formula (its NormalizerProcessorStep):
    MEAN_STD (x − mean)/(std + ε); MIN_MAX 2(x − min)/(max − min) − 1; QUANTILES
    2(x − q01)/(q99 − q01) − 1; QUANTILE10 2(x − q10)/(q90 − q10) − 1; IDENTITY x."""
    folder = copy_fixture(tmp_path, "pi0")
    files = [f for f in os.listdir(folder) if f.endswith("processor.safetensors")]
    for name in files:  # the fixture has no q10 / q90: add them
        flat = load_file(os.path.join(folder, name))
        for feature in ("observation.state", "action"):
            flat[f"{feature}.q10"] = flat[f"{feature}.q01"] * 0.7
            flat[f"{feature}.q90"] = flat[f"{feature}.q99"] * 0.8
        save_file(flat, os.path.join(folder, name))
    norm_map = {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}
    edit_json(os.path.join(folder, "config.json"), normalization_mapping=norm_map)
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        path = os.path.join(folder, name)
        data = read_json(path)
        for step in data["steps"]:
            if "norm_map" in step.get("config", {}):
                step["config"]["norm_map"] = norm_map
        write_json(path, data)
    model = load(folder)
    stats = load_file(os.path.join(folder, "policy_preprocessor_step_6_normalizer_processor.safetensors"))
    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(0)) * 2
    s = {k.removeprefix("observation.state."): v for k, v in stats.items() if k.startswith("observation.state.")}
    expected = {
        "MEAN_STD": lambda: (x - s["mean"]) / (s["std"] + 1e-8),
        "MIN_MAX": lambda: 2 * (x - s["min"]) / (s["max"] - s["min"]) - 1,
        "QUANTILES": lambda: 2 * (x - s["q01"]) / (s["q99"] - s["q01"]) - 1,
        "QUANTILE10": lambda: 2 * (x - s["q10"]) / (s["q90"] - s["q10"]) - 1,
        "IDENTITY": lambda: x,
    }[mode]()
    assert torch.allclose(model.normalize_state(x)[:, :10], expected, atol=1e-5)
    y = torch.randn(2, 8, 8)
    back = model.normalize_actions(model.unnormalize_actions(y)[..., :4])
    assert torch.allclose(back[..., :4], y[..., :4], atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_relative_actions_get_the_state_back(tmp_path, variant):
    """lerobot's use_relative_actions (openpi's extra_delta_transform): the model predicts the
    non-excluded dims relative to the state; env action = un-normalised action + state there
    (lerobot's AbsoluteActionsProcessorStep), and SFT's normalisation subtracts it."""
    folder = copy_fixture(tmp_path, variant)
    names = ["x", "y", "z", "gripper"]
    for name, registry in (("policy_preprocessor.json", "relative_actions_processor"),
                           ("policy_postprocessor.json", "absolute_actions_processor")):  # fmt: skip
        data = read_json(os.path.join(folder, name))
        step = next(s for s in data["steps"] if s["registry_name"] == registry)
        step["config"].update(
            {"enabled": True, "action_names": names} if "action_names" in step["config"] else {"enabled": True}
        )
        write_json(os.path.join(folder, name), data)
    edit_json(os.path.join(folder, "config.json"), use_relative_actions=True, action_feature_names=names)
    model = load(folder)
    assert model.relative_actions == [True, True, True, False]  # the gripper stays absolute
    inputs, _, proc = fixture(variant)
    actions = model.predict_action_chunk(
        raw_images(inputs, proc), proc["raw_state"], inputs["texts"], x0=proc["e2e_x0_zero"]
    )
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    expected = proc["e2e_actions_zero"] + (proc["raw_state"][:, :4] * mask)[:, None, :]
    assert (actions - expected).abs().max().item() <= 1e-4
    obs = {"state": proc["raw_state"]}
    back = model.normalize_actions(actions, obs)
    assert torch.allclose(model.unnormalize_actions(back, obs)[..., :4], actions, atol=1e-4)
    with pytest.raises(ValueError, match="relative to the state: pass the observations"):
        model.unnormalize_actions(back)
    out = str(tmp_path / "export")  # lerobot's fields say the same
    save_pretrained(model, out)
    assert read_json(os.path.join(out, "config.json"))["use_relative_actions"]
    os.remove(os.path.join(out, "rllib_pirl.json"))  # read as lerobot reads it
    assert read_pretrained(out, HEADS).format == "lerobot" and load(out).relative_actions == model.relative_actions


def test_relative_actions_through_the_rl_module():
    """In rollouts the env gets state + delta on the relative dims, while the latents, their
    log-probs and the learner's recomputation stay in the model's own (normalised, relative) space."""
    from ray.rllib.core.columns import Columns

    from rllib_pirl.models.pi0 import PiConfig
    from rllib_pirl.rl_module import LATENTS, LOGP, STEPS, FlowRLModule

    space = obs_space(["base_camera"], state_dim=10)
    stats = {"state": {"mean": [0.5] * 10, "std": [2.0] * 10}, "actions": {"mean": [0.1] * 4, "std": [0.5] * 4}}
    model_config = {
        "exploration": "sde", "num_denoise_steps": 3, "action_chunk": 4, "noise_level": 0.5,
        "noise_std_range": (0.08, 0.16), "exploration_x0": "noise", "logprob_reduction": "sum",
        "instructions": ["pick up the red cube"], "model_class": "rllib_pirl.models.pi0:PiPolicy",
        "model_kwargs": {"pi_config": PiConfig.tiny().to_dict(), "tokenizer": TOKENIZER, "norm_stats": stats,
                         "relative_actions": [True, True, False, True]},
    }  # fmt: skip
    torch.manual_seed(0)
    module = FlowRLModule(
        observation_space=space, action_space=gym.spaces.Box(-9, 9, (4, 4)), model_config=model_config
    )
    g = torch.Generator().manual_seed(0)
    obs = {
        "state": torch.randn(3, 10, generator=g) * 3,
        "base_camera": torch.randint(0, 256, (3, 32, 32, 3), generator=g, dtype=torch.uint8),
        "task_id": torch.zeros(3, 1, dtype=torch.long),
    }
    out = module.forward_exploration({Columns.OBS: obs})
    absolute = (out[LATENTS][:, -1] * 0.5 + 0.1)[:, :4, :4]
    offset = obs["state"][:, None, :4] * torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert torch.allclose(out[Columns.ACTIONS], absolute + offset, atol=1e-5)
    train = module.forward_train({Columns.OBS: obs, LATENTS: out[LATENTS], STEPS: out[STEPS]})
    assert (train[LOGP] - out[LOGP]).abs().max() < 1e-4


# -- what is refused ------------------------------------------------------------------------------
def test_bad_checkpoints_are_refused_before_any_rollout(tmp_path):
    # a truncated download
    folder = copy_fixture(tmp_path, "pi0", "truncated")
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(CheckpointMismatch, match="truncated or partial download"):
        read_pretrained(folder)
    # weights without config.json
    folder = copy_fixture(tmp_path, "pi0", "partial")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(CheckpointMismatch, match="no config.json: a partial download"):
        read_pretrained(folder)
    # a config.json of no known format; a lerobot policy that is not π0
    folder = copy_fixture(tmp_path, "pi0", "unknown")
    write_json(os.path.join(folder, "config.json"), {"hidden_size": 3})
    with pytest.raises(CheckpointMismatch, match="unknown checkpoint format"):
        read_pretrained(folder)
    edit_json(os.path.join(folder, "config.json"), type="act")
    with pytest.raises(CheckpointMismatch, match="'act' is a lerobot policy that is not π0"):
        read_pretrained(folder)
    # what lerobot says that cannot be honoured
    folder = copy_fixture(tmp_path, "pi0", "newer")
    edit_json(os.path.join(folder, "config.json"), some_new_feature=None)
    read_pretrained(folder, HEADS)  # a new field left off is harmless
    edit_json(os.path.join(folder, "config.json"), some_new_feature=True)
    with pytest.raises(CheckpointMismatch, match=r"\['some_new_feature'\] .* fields this package does not know"):
        read_pretrained(folder)
    folder = copy_fixture(tmp_path, "pi05", "variant")
    edit_json(os.path.join(folder, "config.json"), type="pi0")
    with pytest.raises(CheckpointMismatch, match="variant: the weights are a pi05 checkpoint but its config says pi0"):
        read_pretrained(folder, HEADS)
    with pytest.raises(CheckpointMismatch, match="is a pi05 checkpoint but pi_config.variant is pi0"):
        read_pretrained(os.path.join(FIXTURES, "pi05"), {**HEADS, "variant": "pi0"})
    folder = copy_fixture(tmp_path, "pi0", "resolution")
    edit_json(os.path.join(folder, "config.json"), image_resolution=[224, 224])
    with pytest.raises(CheckpointMismatch, match=r"image_resolution \[224, 224\] disagrees"):
        read_pretrained(folder)
    # statistics: none found, several found, or given
    folder = make_openpi_folder(tmp_path, "pi0", stats_dir="assets/lab/robot", name="no_stats")
    shutil.rmtree(os.path.join(folder, "assets"))
    with pytest.raises(CheckpointMismatch, match=r"no normalisation statistics for \['state', 'actions'\] found"):
        load(folder, camera_keys=CAMERAS)
    with pytest.raises(CheckpointMismatch, match="does not record its state.s size: pass state_dim"):
        load(folder, camera_keys=CAMERAS, norm_modes="identity")
    identity = load(folder, camera_keys=CAMERAS, norm_modes="identity", state_dim=10)
    assert torch.equal(identity.state_scale, torch.ones(32))
    folder = make_openpi_folder(tmp_path, "pi0", name="two_stats")
    os.makedirs(os.path.join(folder, "assets", "other"))
    shutil.copy(os.path.join(folder, "assets", "physical-intelligence", "libero", "norm_stats.json"),
                os.path.join(folder, "assets", "other"))  # fmt: skip
    with pytest.raises(CheckpointMismatch, match="several norm_stats.json files"):
        load(folder, camera_keys=CAMERAS)
    chosen = load(folder, camera_keys=CAMERAS, norm_stats=os.path.join(folder, "assets", "other"))
    assert chosen.norm_stats["state"]["mean"] == fixture_norm_stats("pi0")["state"]["mean"]
    # before Ray starts: the run's config is refused with the same reason
    model_config = {"model_class": "rllib_pirl.models.pi0:PiPolicy", "model_kwargs": {"pretrained": folder}}
    with pytest.raises(UsageError, match="pretrained: .*several norm_stats.json files"):
        config_dict_for_rllib({"model_config": model_config})


def test_env_features_are_checked_before_ray_starts():
    """A run's config: the checkpoint's cameras against the env table's (ManiSkill rgb:
    base_camera / hand_camera; LIBERO: image / wrist_image and its 8-D state), no env built."""
    from rllib_pirl.algorithms import FlowSDE
    from rllib_pirl.experiments import build_config

    folder = os.path.join(FIXTURES, "pi0")
    kwargs = {"pretrained": folder, "tokenizer": TOKENIZER, "pi_config": HEADS}
    config = {
        "env_config": {"task": "PickCube-v1", "obs_mode": "rgb", "control_mode": "pd_ee_delta_pos"},
        "action_chunk": 4,
        "model_config": {"model_class": "rllib_pirl.models.pi0:PiPolicy", "model_kwargs": kwargs},
    }
    with pytest.raises(
        UsageError, match=r"pretrained: .*cameras \['base_0_rgb', 'left_wrist_0_rgb'\] .* not the env's"
    ):
        build_config(FlowSDE, "ManiSkill", config, "x")
    kwargs["camera_keys"] = ["base_camera", "hand_camera"]
    build_config(FlowSDE, "ManiSkill", config, "x")
    config["env_config"] = {"suite": "libero_spatial", "tasks": [0]}
    kwargs["camera_keys"] = ["image", "wrist_image"]
    with pytest.raises(UsageError, match="trained on a 10-D state .* the env gives 8 dims"):
        build_config(FlowSDE, "LIBERO", config, "x")


def obs_space(cameras, state_dim=10):
    spaces = {"state": gym.spaces.Box(-10, 10, (state_dim,), np.float32)}
    spaces.update({k: gym.spaces.Box(0, 255, (32, 32, 3), np.uint8) for k in cameras})
    spaces["task_id"] = gym.spaces.Box(0, 1, (1,), np.int64)
    return gym.spaces.Dict(spaces)


def test_env_features_that_disagree_are_refused(tmp_path):
    """An env whose cameras, state or actions are not the checkpoint's: refused, naming the fix;
    the camera mapping (and an empty slot) is honoured."""
    folder = os.path.join(FIXTURES, "pi0")
    common = {"tokenizer": TOKENIZER, "pi_config": HEADS, "instructions": ["pick up the red cube"]}
    actions = gym.spaces.Box(-1, 1, (5, 4))
    with pytest.raises(CheckpointMismatch, match=r"cameras \['base_0_rgb', 'left_wrist_0_rgb'\] .* not the env's"):
        PiPolicy.from_spaces(obs_space(["base_camera", "hand_camera"]), actions, pretrained=folder, **common)
    mapped = PiPolicy.from_spaces(
        obs_space(["base_camera", "hand_camera"]),
        actions,
        pretrained=folder,
        camera_keys=["base_camera", "hand_camera"],
        **common,
    )
    assert mapped.camera_keys == ["base_camera", "hand_camera"]
    named = PiPolicy.from_spaces(obs_space(CAMERAS), actions, pretrained=folder, **common)
    assert named.camera_keys == CAMERAS
    with pytest.raises(CheckpointMismatch, match="has 1 cameras, the checkpoint .* 2"):
        PiPolicy.from_spaces(
            obs_space(["base_camera"]), actions, pretrained=folder, camera_keys=["base_camera"], **common
        )
    one = PiPolicy.from_spaces(
        obs_space(["base_camera"]), actions, pretrained=folder, camera_keys=["base_camera", None], **common
    )
    obs = {
        "state": torch.zeros(2, 10),
        "base_camera": torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
        "task_id": torch.zeros(2, 1),
    }
    images, mask = one.images(obs)
    assert mask.tolist() == [[True, False]] * 2 and bool((images[:, 1] == -1).all())
    with pytest.raises(CheckpointMismatch, match="trained on a 10-D state .* the env gives 9 dims"):
        PiPolicy.from_spaces(obs_space(CAMERAS, 9), actions, pretrained=folder, **common)
    with pytest.raises(ValueError, match="actions have 4 dims .*, the env's 7"):
        PiPolicy.from_spaces(obs_space(CAMERAS), gym.spaces.Box(-1, 1, (5, 7)), pretrained=folder, **common)


# -- export ------------------------------------------------------------------------------------------
def tensor_shapes(path):
    return {k: tuple(v.shape) for k, v in load_file(path).items()}


def processor_steps(folder, name):
    data = read_json(os.path.join(folder, name))
    return [(s["registry_name"], s["config"], s.get("state_file")) for s in data["steps"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_is_what_lerobot_writes(tmp_path, variant):
    """`save_pretrained` of a loaded lerobot folder: config.json with lerobot's fields (and no
    other), the same tensor names and shapes, the same processor steps and statistics files —
    and it reloads here to identical actions."""
    source = os.path.join(FIXTURES, variant)
    model = load(source)
    out = str(tmp_path / "export")
    save_pretrained(model, out)
    theirs, ours = (read_json(os.path.join(f, "config.json")) for f in (source, out))
    assert set(ours) == set(theirs)
    for key in ("type", "input_features", "output_features", "chunk_size", "n_action_steps", "max_state_dim",
                "max_action_dim", "num_inference_steps", "image_resolution", "normalization_mapping",
                "tokenizer_max_length", "use_relative_actions", "min_period", "max_period"):  # fmt: skip
        assert ours[key] == theirs[key], key
    assert tensor_shapes(os.path.join(out, "model.safetensors")) == tensor_shapes(
        os.path.join(source, "model.safetensors")
    )
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        assert processor_steps(out, name) == processor_steps(source, name)
        for _, _, state_file in processor_steps(out, name):
            if state_file:
                assert tensor_shapes(os.path.join(out, state_file)) == tensor_shapes(os.path.join(source, state_file))
    reloaded = load(out, pi_config=None)
    assert reloaded.config == model.config and reloaded.camera_keys == model.camera_keys
    assert_end_to_end(reloaded, variant)
