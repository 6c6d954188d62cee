"""The learner's one pass over a train batch: values once (V_old = GAE's values), in
chunks, and π0's frozen prefix kept per sample and reused by every epoch and minibatch."""

import numpy as np
import pytest
import torch
import tree
from conftest import tiny_pi_module
from ray.rllib.core.columns import Columns

from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer
from rllib_pirl.rl_module import LATENTS, LOGP, REF_KL, ROW, STEPS

CAMERAS = ["base_camera", "hand_camera"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), ["lift the red cube"])


def make_module(tokenizer, variant, exploration="noise"):
    module, obs_space = tiny_pi_module(
        variant,
        tokenizer,
        CAMERAS,
        {"value_hidden_sizes": [16], "noise_hidden_sizes": [16]},
        instructions=["lift the red cube"],
        num_denoise_steps=3,
        exploration=exploration,
    )
    with torch.no_grad():  # released checkpoints have non-trivial (adaptive) norms
        for name, p in module.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    torch.manual_seed(1)
    obs = {k: torch.as_tensor(np.stack([s.sample() for _ in range(7)])) for k, s in obs_space.items()}
    out = module.forward_exploration({Columns.OBS: obs})
    batch = {Columns.OBS: obs, LATENTS: out[LATENTS], STEPS: out[STEPS], LOGP: out[LOGP]}
    return module, batch


def loss_and_grads(module, minibatch):
    """Log-probs, values and the gradients of a loss made of both (what the PPO loss uses)."""
    module.zero_grad(set_to_none=True)
    out = module.forward_train(minibatch)
    values = module.compute_values(minibatch, embeddings=out[Columns.EMBEDDINGS])
    (out[LOGP].sum() + values.square().sum()).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out[LOGP].detach(), values.detach(), grads


@pytest.mark.parametrize(("variant", "cache"), [("pi0", "device"), ("pi05", "device"), ("pi0", "cpu")])
def test_cached_prefix_gives_the_losses_and_gradients_of_recomputing_it(tokenizer, variant, cache):
    module, batch = make_module(tokenizer, variant)
    module.prepare_train_batch(batch, chunk_size=3, prefix_cache=cache)  # chunks of 3, 3, 1 rows
    assert module._encodings is not None and torch.equal(batch[ROW], torch.arange(7))
    rows = torch.tensor([5, 0, 3, 6])  # a shuffled minibatch
    minibatch = tree.map_structure(lambda x: x[rows], batch)
    calls = []
    original = module.model.backbone.prefix
    module.model.backbone.prefix = lambda *a: calls.append(1) or original(*a)
    cached = loss_and_grads(module, minibatch)
    assert not calls  # the prefix did not run again
    module.release_train_batch()
    recomputed = loss_and_grads(module, minibatch)
    assert calls
    for a, b in zip(cached[:2], recomputed[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cached[2].keys() == recomputed[2].keys() and any("gemma_expert" in k for k in cached[2])
    for name, grad in cached[2].items():
        torch.testing.assert_close(grad, recomputed[2][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exploration", ["sde", "noise"])
def test_a_pi0_reference_policy_shares_the_frozen_vlm_and_its_cached_prefix(tokenizer, exploration):
    """``ref_kl_coeff``'s reference of a π0: a copy of the trainable weights only (the frozen
    VLM's tensors are the model's own), no prefix computed for it, KL 0 at the starting
    weights and > 0 on every sample once the action expert moved."""
    module, batch = make_module(tokenizer, "pi0", exploration)
    module.keep_reference()
    reference = module._reference
    own = {id(p) for p in module.model.parameters()}
    shared = [p for p in reference.parameters() if id(p) in own]
    assert shared and all(not p.requires_grad for p in shared)
    assert {id(p) for p in module.model.parameters() if not p.requires_grad} == {id(p) for p in shared}
    assert all(not p.requires_grad for p in reference.parameters())
    module.prepare_train_batch(batch, chunk_size=7, prefix_cache="device")
    calls = []
    for model in (module.model, reference):
        original = model.backbone.prefix
        model.backbone.prefix = lambda *a, original=original: calls.append(1) or original(*a)
    out = module.forward_train(batch)
    assert not calls
    torch.testing.assert_close(out[REF_KL], torch.zeros(7), atol=1e-6, rtol=0)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "gemma_expert" in name and p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    out = module.forward_train(batch)
    assert (out[REF_KL] > 0).all() and out[REF_KL].requires_grad


def test_values_are_computed_once_per_train_batch_in_chunks(tokenizer):
    """V_old and GAE's values: one pass in chunks, equal to the values of the whole batch
    at once; RLlib's GAE (compute_values on the same batch) gets them without encoding."""
    module, batch = make_module(tokenizer, "pi0", exploration="sde")
    with torch.no_grad():
        whole = module.compute_values(batch)
    sizes = []
    original = module.model.encode
    module.model.encode = lambda obs: sizes.append(len(obs["state"])) or original(obs)
    values = module.prepare_train_batch(batch, chunk_size=2, prefix_cache="off")
    assert sizes == [2, 2, 2, 1] and module._encodings is None  # "off": nothing kept
    torch.testing.assert_close(values, whole, rtol=1e-5, atol=1e-6)
    assert module.compute_values(batch) is values and sizes == [2, 2, 2, 1]
    module.compute_values(batch)  # the hand-over happens once
    assert sizes == [2, 2, 2, 1, 7]


def test_prefix_cache_is_validated():
    from rllib_pirl import FlowSDEConfig

    config = FlowSDEConfig().environment("PointReach").training(prefix_cache="gpu", value_chunk_size=0)
    with pytest.raises(ValueError, match="prefix_cache must be one of") as error:
        config.validate()
    assert "value_chunk_size must be an integer >= 1" in str(error.value)


def one_iteration(tokenizer, prefix_cache):
    """One iteration of a tiny π0 on ManiSkill rgb (3 epochs of 2 minibatches): the rows the
    learner's VLM prefix ran on, the rows of its value pass, and the learner's weights after."""
    from conftest import learner_states, tiny_pi_rl_config

    from rllib_pirl import FlowSDEConfig

    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 32, "max_episode_steps": 12}
    config = tiny_pi_rl_config(
        FlowSDEConfig, "ManiSkill", {**env_config, "instructions": ["lift the red cube"]}, "pi0", tokenizer
    ).training(num_epochs=3, value_chunk_size=5, prefix_cache=prefix_cache)
    algo = config.build_algo()
    try:
        module = algo.learner_group._learner.module["default_policy"].unwrapped()
        rows, prepared = [], []
        prefix, prepare = module.model.backbone.prefix, module.prepare_train_batch

        def counted_prefix(images, *args):
            rows.append(len(images))
            return prefix(images, *args)

        def counted_prepare(batch, *args):
            prepared.append(len(batch[Columns.OBS]["state"]))
            return prepare(batch, *args)

        module.model.backbone.prefix, module.prepare_train_batch = counted_prefix, counted_prepare
        result = algo.train()["learners"]["default_policy"]
        assert result["num_module_steps_trained"] >= 3 * 8
        assert module._encodings is None  # freed after the update
        return rows, prepared, learner_states(algo)[0]
    finally:
        algo.stop()


def test_an_update_runs_the_prefix_once_per_sample_and_learns_the_same(tokenizer, ray_session):
    """Through RLlib (its shuffles and minibatches): with the prefix kept, the learner's VLM
    prefix runs once per train-batch row (the value pass, in chunks), not 1 + 3 epochs times,
    and the update ends at the same weights as recomputing it."""
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    rows, prepared, cached = one_iteration(tokenizer, "device")
    assert len(prepared) == 1 and sum(rows) == prepared[0] and max(rows) == 5
    rows, prepared, recomputed = one_iteration(tokenizer, "off")
    assert sum(rows) >= 4 * prepared[0]  # the value pass (handed to GAE) + 3 epochs (RLlib's minibatches wrap)
    diff = max(float((cached[k] - recomputed[k]).abs().max()) for k in cached)
    assert diff <= 1e-5, diff
