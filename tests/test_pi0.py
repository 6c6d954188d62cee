"""π0 / π0.5 models: numerics against transformers' π0, checkpoint layouts, prefix
caching, the observation pipeline and bad input (tiny random models, CPU)."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import assert_one_iteration_trains_the_expert, tiny_pi_rl_config
from safetensors.torch import load_file, save_file

from rllib_pirl.flow import sample_chain
from rllib_pirl.models.pi0 import PiConfig, PiPolicy
from rllib_pirl.models.pi0.inputs import PromptTokenizer, discretize_state, resize_with_pad, train_tiny_tokenizer
from rllib_pirl.models.pi0.layouts import CheckpointMismatch, load_pretrained, read_pretrained, save_pretrained

INSTRUCTIONS = ["pick up the red cube", "push the cube to the goal"]
CAMERAS = ["base_camera", "hand_camera"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), INSTRUCTIONS)


def make_policy(tokenizer, variant="pi0", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault(
        "norm_stats", {"state": {"mean": [0.1] * 10, "std": [2.0] * 10, "q01": [-1.0] * 10, "q99": [3.0] * 10}}
    )
    policy = PiPolicy(
        PiConfig.tiny(variant),
        state_dim=10,
        camera_keys=CAMERAS,
        tokenizer=tokenizer,
        instructions=INSTRUCTIONS,
        **kwargs,
    ).eval()
    with torch.no_grad():  # released checkpoints have non-trivial norms and adaptive norms
        for name, p in policy.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return policy


def make_obs(batch=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "state": torch.randn(batch, 10, generator=g),
        **{k: torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8) for k in CAMERAS},
        "task_id": torch.arange(batch)[:, None] % 2,
    }


def transformers_pi0(pc: PiConfig, folder):
    """transformers' native π0 / π0.5 of the same size, loaded from our lerobot-layout file
    through transformers' own key conversion."""
    import transformers

    name = "PI0" if pc.variant == "pi0" else "PI05"
    config_cls, model_cls = (
        getattr(transformers, f"{name}Config"),
        getattr(transformers, f"{name}ForConditionalGeneration"),
    )

    v, e, vis = pc.vlm, pc.expert, pc.vision
    gemma = {"model_type": "gemma", "num_hidden_layers": v.depth, "num_attention_heads": v.num_heads}
    cfg = config_cls(
        vlm_config={
            "model_type": "paligemma",
            "text_config": dict(
                gemma,
                hidden_size=v.width,
                intermediate_size=v.mlp_dim,
                num_key_value_heads=v.num_kv_heads,
                head_dim=v.head_dim,
                vocab_size=pc.vocab_size,
            ),
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": vis.width,
                "intermediate_size": vis.mlp_dim,
                "patch_size": vis.patch_size,
                "image_size": vis.image_size,
                "num_hidden_layers": vis.depth,
                "num_attention_heads": vis.num_heads,
                "vision_use_head": False,
            },
            "projection_dim": v.width,
            "image_token_id": pc.vocab_size - 1,
            "vocab_size": pc.vocab_size,
        },
        dit_config=dict(
            gemma,
            hidden_size=e.width,
            intermediate_size=e.mlp_dim,
            num_key_value_heads=e.num_kv_heads,
            head_dim=e.head_dim,
        ),
        chunk_size=pc.chunk_size,
        max_action_dim=pc.max_action_dim,
        **({"max_state_dim": pc.max_state_dim} if pc.variant == "pi0" else {}),
    )
    cfg.save_pretrained(folder)
    model, info = model_cls.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_pi0_matches_transformers_pi0(tokenizer, tmp_path, variant):
    """Same tiny random weights (through a lerobot-layout file), same noise: same
    actions after K steps (≤ 1e-4) and the same flow-matching loss as transformers'
    PI0ForConditionalGeneration / PI05ForConditionalGeneration."""
    ours = make_policy(tokenizer, variant)
    save_pretrained(ours, str(tmp_path / "ck"))
    os.makedirs(tmp_path / "hf")
    os.replace(tmp_path / "ck" / "model.safetensors", tmp_path / "hf" / "model.safetensors")
    ref, info = transformers_pi0(ours.config, str(tmp_path / "hf"))
    # Every key transformers expects (the expert's unused token embedding: our export's zeros).
    assert not info["missing_keys"] and not info["unexpected_keys"]
    if variant == "pi05":  # released files' norms and adaptive norms are not trivial
        assert any(".dense." in k for k in load_file(str(tmp_path / "hf" / "model.safetensors")))

    obs, b, c = make_obs(), 3, ours.config
    noise = torch.randn(b, c.chunk_size, c.max_action_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        context = ours.encode(obs)
        ours_actions = sample_chain(lambda x, t: ours.velocity(context, x, t), noise, 5).actions
        tokens, token_mask = ours.prompt(obs, context.state)
        per_image = len(CAMERAS) * c.tokens_per_image
        input_ids = torch.cat([torch.full((b, per_image), c.vocab_size - 1), tokens], 1)
        attention = torch.cat([torch.ones(b, per_image, dtype=torch.long), token_mask.long()], 1)
        kwargs = {
            **({"state": context.state} if variant == "pi0" else {}),
            "input_ids": input_ids,
            "pixel_values": ours.images(obs)[0],
            "attention_mask": attention,
            "pixel_attention_mask": torch.ones(b, len(CAMERAS), dtype=torch.bool),
        }
        ref_actions = ref.sample_actions(noise=noise, num_steps=5, **kwargs)
        assert (ours_actions - ref_actions).abs().max().item() <= 1e-4
        assert ours_actions.abs().mean() > 0.1  # not trivially zero

        actions = torch.randn(b, c.chunk_size, c.max_action_dim, generator=torch.Generator().manual_seed(2))
        t = torch.tensor([0.1, 0.5, 0.9])
        ref_loss = ref(noise=noise, timestep=t, actions=actions, **kwargs).loss
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        v, _ = ours.velocity(context, x_t, t)
        assert abs(((v - (noise - actions)) ** 2).mean().item() - ref_loss.item()) <= 1e-5


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("layout", ["lerobot", "openpi"])
def test_checkpoint_layouts_round_trip(tokenizer, tmp_path, variant, layout):
    model = make_policy(tokenizer, variant)
    folder = str(tmp_path / "ck")
    save_pretrained(model, folder, layout=layout)
    keys = list(load_file(os.path.join(folder, "model.safetensors")))
    assert all(k.startswith("model.paligemma_with_expert.") == (layout == "lerobot") for k in keys if "paligemma" in k)
    assert any(".vision_tower.vision_model." in k for k in keys) and any(
        k.endswith("paligemma.lm_head.weight") for k in keys
    )
    # Released files also hold the expert's (unused) lm_head (our lerobot export writes it as
    # lerobot does, and the embedding twice): skipped and reported, not "unexpected".
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    prefix = "model." if layout == "lerobot" else ""
    tensors[f"{prefix}paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(7, model.config.expert.width)
    save_file(tensors, os.path.join(folder, "model.safetensors"))

    info = read_pretrained(folder)
    assert info.layout == layout and info.format == "rllib_pirl" and info.pi_config == model.config
    loaded = load_pretrained(folder, PiPolicy)
    expected = ["paligemma_with_expert.gemma_expert.lm_head.weight"]
    if layout == "lerobot":
        expected.insert(0, "paligemma_with_expert.paligemma.lm_head.weight")
    assert list(loaded.skipped_keys) == expected
    own, new = model.state_dict(), loaded.state_dict()
    assert own.keys() == new.keys() and all(torch.equal(own[k], new[k]) for k in own)
    assert loaded.norm_modes == model.norm_modes and loaded.norm_stats.keys() == model.norm_stats.keys()
    for name, entry in model.norm_stats.items():
        assert all(np.allclose(loaded.norm_stats[name][k], v) for k, v in entry.items())
    assert torch.equal(loaded.state_loc, model.state_loc) and torch.equal(loaded.state_scale, model.state_scale)
    assert loaded.instructions == INSTRUCTIONS and loaded.camera_keys == CAMERAS
    obs = make_obs()
    with torch.no_grad():
        a, b = (m.encode(obs).cache.output for m in (model, loaded))
    assert torch.equal(a, b)


def test_architecture_is_read_from_a_bare_weights_file(tokenizer, tmp_path):
    """An openpi file without our config: the sizes come from the weights' shapes
    (head counts are openpi's: 8 per Gemma, 16 for SigLIP)."""
    from rllib_pirl.models.pi0 import GemmaSize, VisionSize

    config = PiConfig.tiny(
        "pi05",
        vlm=GemmaSize(64, 2, 128, 8, 1, 16),
        expert=GemmaSize(32, 2, 64, 8, 1, 16),
        vision=VisionSize(width=32, depth=2, mlp_dim=64, num_heads=16, patch_size=8, image_size=32),
    )
    model = PiPolicy(config, state_dim=10, camera_keys=CAMERAS, tokenizer=tokenizer)
    save_pretrained(model, str(tmp_path / "ck"), layout="openpi")
    os.makedirs(tmp_path / "bare")
    os.replace(tmp_path / "ck" / "model.safetensors", tmp_path / "bare" / "model.safetensors")
    hints_free = read_pretrained(str(tmp_path / "bare" / "model.safetensors")).pi_config
    c = model.config
    assert hints_free.variant == "pi05" and hints_free.vlm == c.vlm and hints_free.expert == c.expert
    assert hints_free.vision == c.vision and hints_free.vocab_size == c.vocab_size
    assert hints_free.max_action_dim == c.max_action_dim


def test_wrong_checkpoints_are_reported_before_any_rollout(tokenizer, tmp_path):
    save_pretrained(make_policy(tokenizer, "pi0"), str(tmp_path / "pi0"))
    with pytest.raises(CheckpointMismatch, match="pi0 checkpoint but pi_config.variant is pi05"):
        load_pretrained(str(tmp_path / "pi0"), PiPolicy, pi_config=PiConfig.tiny("pi05").to_dict())
    # A π0 file given to a π0.5 model: every difference is listed, with the hint.
    pi05 = make_policy(tokenizer, "pi05")
    from rllib_pirl.models.pi0.layouts import load_layout_state

    with pytest.raises(CheckpointMismatch, match=r"(?s)This is a pi0 checkpoint.*missing \(\d+\).*unexpected \(\d+\)"):
        load_layout_state(pi05, load_file(str(tmp_path / "pi0" / "model.safetensors")), "pi0 file")
    # Wrong size: the differing shapes are named.
    bigger = PiPolicy(
        PiConfig.tiny(chunk_size=8, max_action_dim=12), state_dim=10, camera_keys=CAMERAS, tokenizer=tokenizer
    )
    with pytest.raises(
        CheckpointMismatch,
        match=r"shapes \(checkpoint, model\) \(3\): action_in_proj.weight: \(\(32, 8\), \(32, 12\)\)",
    ):
        load_layout_state(bigger, load_file(str(tmp_path / "pi0" / "model.safetensors")), "pi0 file")
    with pytest.raises(FileNotFoundError, match="No π0 / π0.5 weights"):
        read_pretrained(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="Tokenizer file"):
        PiPolicy(PiConfig.tiny(), state_dim=10, camera_keys=CAMERAS, tokenizer=str(tmp_path / "missing.model"))


def test_env_spaces_that_do_not_fit_are_rejected(tokenizer):
    obs_space = gym.spaces.Dict(
        {
            "state": gym.spaces.Box(-1, 1, (40,), np.float32),
            "base_camera": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
            "task_id": gym.spaces.Box(0, 1, (1,), np.int64),
        }
    )
    kwargs = {"pi_config": PiConfig.tiny().to_dict(), "tokenizer": tokenizer}
    with pytest.raises(ValueError, match="40 dims, more than the model's 32"):
        PiPolicy.from_spaces(obs_space, gym.spaces.Box(-1, 1, (5, 4)), **kwargs)
    obs_space["state"] = gym.spaces.Box(-1, 1, (10,), np.float32)
    with pytest.raises(ValueError, match="chunks of 5 x 9 actions; the model predicts 8 x 8"):
        PiPolicy.from_spaces(obs_space, gym.spaces.Box(-1, 1, (5, 9)), **kwargs)
    with pytest.raises(ValueError, match="action statistics have 7 dims, the env's actions 4"):
        PiPolicy.from_spaces(
            obs_space,
            gym.spaces.Box(-1, 1, (5, 4)),
            norm_stats={"actions": {"mean": [0] * 7, "std": [1] * 7}},
            **kwargs,
        )
    with pytest.raises(TypeError, match="obs_mode: rgb"):
        PiPolicy.from_spaces(gym.spaces.Box(-1, 1, (10,)), gym.spaces.Box(-1, 1, (5, 4)), **kwargs)
    model = PiPolicy.from_spaces(obs_space, gym.spaces.Box(-1, 1, (5, 4)), **kwargs)
    assert model.camera_keys == ["base_camera"] and model.state_dim == 10


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("exploration", ["sde", "noise"])
def test_the_prefix_runs_once_per_sample_whatever_k(tokenizer, variant, exploration):
    from rllib_pirl.rl_module import FlowRLModule

    policy = make_policy(tokenizer, variant)
    calls = []
    original = policy.backbone.prefix
    policy.backbone.prefix = lambda *a, **k: calls.append(1) or original(*a, **k)
    obs_space = gym.spaces.Dict(
        {
            "state": gym.spaces.Box(-1, 1, (10,), np.float32),
            **{k: gym.spaces.Box(0, 255, (32, 32, 3), np.uint8) for k in CAMERAS},
            "task_id": gym.spaces.Box(0, 1, (1,), np.int64),
        }
    )
    for k in (1, 10):
        module = FlowRLModule(
            observation_space=obs_space,
            action_space=gym.spaces.Box(-1, 1, (5, 4)),
            model_config={"action_chunk": 5, "num_denoise_steps": k, "exploration": exploration},
        )
        module.model = policy
        for forward in (module.forward_exploration, module.forward_inference):
            calls.clear()
            out = forward({"obs": make_obs()})
            assert len(calls) == 1 and out["actions"].shape == (3, 5, 4)


def test_pi05_prompt_carries_the_discretised_state(tokenizer):
    policy = make_policy(tokenizer, "pi05")
    obs = make_obs(batch=2)
    obs["task_id"] = torch.zeros(2, 1, dtype=torch.long)
    obs["state"][1] = obs["state"][0] + 1.5
    state = policy.normalize_state(obs["state"])
    tokens, mask = policy.prompt(obs, state)
    text = PromptTokenizer(tokenizer, 200).sp.decode(tokens[0][mask[0]].tolist())
    bins = discretize_state(state[0, :10].numpy())
    assert text == f"Task: pick up the red cube, State: {' '.join(map(str, bins))};\nAction: "
    assert not torch.equal(tokens[0], tokens[1])  # the state changes the prompt
    # quantile normalisation (π0.5's default): q01 → −1, q99 → 1
    q = policy.normalize_state(torch.tensor([[-1.0] * 10, [3.0] * 10]))[:, :10]
    assert torch.allclose(q, torch.tensor([[-1.0] * 10, [1.0] * 10]), atol=1e-5)


def test_resize_with_pad_keeps_the_aspect_ratio():
    image = torch.full((1, 20, 40, 3), 255, dtype=torch.uint8)
    out = resize_with_pad(image, 32)
    assert out.shape == (1, 3, 32, 32) and out.min() == -1.0 and out.max() == 1.0
    rows = (out[0, 0] > 0).any(1).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (8, 23)  # 16 rows of image, centred
    same = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    assert torch.allclose(resize_with_pad(same, 32), same.permute(0, 3, 1, 2).float() / 127.5 - 1.0)


def test_only_the_expert_and_heads_train_by_default(tokenizer):
    policy = make_policy(tokenizer)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in policy.named_parameters() if p.requires_grad}
    assert "backbone.paligemma" not in trainable and "backbone.gemma_expert" in trainable
    context = policy.encode(make_obs())
    assert not context.cache.keys[0].requires_grad  # the prefix is computed without gradient
    x = torch.randn(3, 8, 8)
    v, _hidden = policy.velocity(context, x, torch.full((3,), 0.5))
    v.sum().backward()
    assert policy.action_out_proj.weight.grad is not None
    value = policy.value(context)
    assert value.shape == (3,) and value.requires_grad


def test_saved_config_is_lerobot_style(tokenizer, tmp_path):
    save_pretrained(make_policy(tokenizer, "pi05"), str(tmp_path / "ck"))
    with open(tmp_path / "ck" / "config.json") as f:
        config = json.load(f)
    assert config["type"] == "pi05" and config["normalization_mapping"]["STATE"] == "QUANTILES"
    with open(tmp_path / "ck" / "policy_preprocessor.json") as f:
        normalizer = next(s for s in json.load(f)["steps"] if s["registry_name"] == "normalizer_processor")
    stats = load_file(str(tmp_path / "ck" / normalizer["state_file"]))
    assert stats["observation.state.q99"].shape == (10,)


# Each (variant, algorithm) pair runs one iteration on ManiSkill rgb once: these two in fp32
# here, the other two in bfloat16 (test_bfloat16_trains_checkpoints_and_restores); an rgb env
# process costs 12-45 s of software rendering to start here, so the pairs are not run twice.
@pytest.mark.parametrize(("variant", "algorithm"), [("pi0", "noise"), ("pi05", "sde")])
def test_one_rl_iteration_on_maniskill_rgb(tokenizer, ray_session, variant, algorithm):
    """Tiny π0 / π0.5 (two 32-px cameras + state + instruction) on ManiSkill PickCube,
    CPU simulation, the instruction from env_config: a first Flow-SDE / Flow-Noise iteration at
    lr 0 recomputes exactly the rollouts' log-probs (ratio 1 through RLlib's whole pipeline, camera
    pictures included), then an iteration trains the expert."""
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    if not os.environ.get("VK_ICD_FILENAMES") and not os.path.isdir("/usr/share/vulkan/icd.d"):
        pytest.skip("no Vulkan driver: run scripts/setup_maniskill.sh and source .vulkan/env.sh")
    from rllib_pirl import FlowNoiseConfig, FlowSDEConfig

    instruction = "lift the red cube"
    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 32, "max_episode_steps": 12}
    config = tiny_pi_rl_config(
        FlowSDEConfig if algorithm == "sde" else FlowNoiseConfig,
        "ManiSkill",
        {**env_config, "instructions": [instruction]},
        variant,
        tokenizer,
        noise_hidden_sizes=[16],
    )
    # lr 0 for the first update (RLlib moves the lr to the steps sampled after each update), then 1e-3
    config.training(lr=[[0, 0.0], [1, 1e-3]], value_lr=0.0)
    algo = config.build_algo()
    try:
        model = algo.get_module().model
        assert isinstance(model, PiPolicy) and model.config.variant == variant
        assert model.instructions == [instruction] and model.camera_keys == CAMERAS
        learner = algo.train()["learners"]["default_policy"]
        assert learner["approx_kl"] < 1e-7 and learner["clip_fraction"] == 0.0
        assert_one_iteration_trains_the_expert(algo)
    finally:
        algo.stop()


@pytest.mark.parametrize(("variant", "algorithm"), [("pi0", "sde"), ("pi05", "noise")])
def test_bfloat16_trains_checkpoints_and_restores(tokenizer, ray_session, tmp_path, variant, algorithm):
    """``dtype: bfloat16`` end to end: rollouts, one update (AdamW on the fp32 master weights of
    the expert and heads), a checkpoint and its restore into a new algorithm, equal weights."""
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    from rllib_pirl import FlowNoiseConfig, FlowSDEConfig

    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 32, "max_episode_steps": 12}
    config = tiny_pi_rl_config(
        FlowSDEConfig if algorithm == "sde" else FlowNoiseConfig,
        "ManiSkill",
        {**env_config, "instructions": ["lift the red cube"]},
        variant,
        tokenizer,
        noise_hidden_sizes=[16],
        dtype="bfloat16",
    )
    algo = config.build_algo()
    try:
        model = algo.get_module().model
        assert model.backbone.dtype == torch.bfloat16
        assert model.backbone.paligemma.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert_one_iteration_trains_the_expert(algo)
        algo.save_to_path(str(tmp_path / "ck"))
        trained = {k: v.clone() for k, v in algo.get_module().model.state_dict().items()}
    finally:
        algo.stop()
    restored = type(algo).from_checkpoint(str(tmp_path / "ck"))
    try:
        state = restored.get_module().model.state_dict()
        assert state.keys() == trained.keys()
        assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in trained.items())
        assert restored.iteration == 1
    finally:
        restored.stop()


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_bfloat16_transformer_keeps_fp32_outputs(tokenizer, variant):
    full = make_policy(tokenizer, variant)
    half = make_policy(tokenizer, variant, dtype="bfloat16")
    half.load_state_dict(full.state_dict())  # same weights, rounded to bf16 in the transformer
    assert half.backbone.dtype == torch.bfloat16 and half.action_out_proj.weight.dtype == torch.float32
    # mixed precision: the frozen VLM is stored in bf16, the trained expert keeps fp32 master weights
    assert {p.dtype for p in half.backbone.paligemma.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.backbone.gemma_expert.parameters()} == {torch.float32}
    obs, x, t = make_obs(), torch.randn(3, 8, 8), torch.full((3,), 0.7)
    with torch.no_grad():
        (v32, _), (v16, h16) = (m.velocity(m.encode(obs), x, t) for m in (full, half))
        values = half.value(half.encode(obs))
    assert v16.dtype == h16.dtype == values.dtype == torch.float32
    assert (v16 - v32).abs().max() < 0.1 * v32.abs().max()


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_prompts_that_would_be_cut_are_refused(tokenizer, variant):
    long = " ".join(f"object{i}" for i in range(60))  # unseen words: many byte-level tokens
    with pytest.raises(ValueError, match="more than max_token_len=.*raise pi_config.max_token_len"):
        PiPolicy(PiConfig.tiny(variant), state_dim=10, camera_keys=CAMERAS, tokenizer=tokenizer, instructions=[long])


def test_sft_from_a_pretrained_checkpoint_takes_the_demos_statistics(tokenizer, tmp_path):
    """train_pi_sft(pretrained=...) keeps the checkpoint's architecture and weights'
    layout and replaces its statistics with the demos'."""
    from rllib_pirl.demos import Demo
    from rllib_pirl.sft import train_pi_sft

    make_policy(tokenizer).save_pretrained(str(tmp_path / "base"))
    rng = np.random.default_rng(0)
    demos = [
        Demo(
            "PickCube-v1",
            rng.normal(3.0, 2.0, (7, 10)).astype(np.float32),
            rng.normal(0.5, 0.1, (6, 4)).astype(np.float32),
            {cam: rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8) for cam in CAMERAS},
        )
        for _ in range(2)
    ]
    model = train_pi_sft(
        demos,
        ["PickCube-v1"],
        str(tmp_path / "out"),
        tokenizer,
        pretrained=str(tmp_path / "base"),
        instructions=INSTRUCTIONS[:1],
        steps=2,
        batch_size=4,
    )
    loaded = load_pretrained(str(tmp_path / "out"), PiPolicy)
    assert loaded.config == model.config == PiConfig.tiny()
    states = np.concatenate([d.obs[:-1] for d in demos])
    assert np.allclose(loaded.norm_stats["state"]["mean"], states.mean(0), atol=1e-5)
    assert torch.allclose(loaded.state_loc[:10], torch.from_numpy(states.mean(0)), atol=1e-5)
    assert torch.allclose(model.state_loc, loaded.state_loc)
