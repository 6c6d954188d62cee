"""SFT data, training and model checkpoints (no simulator needed)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_pirl.demos import Demo
from rllib_pirl.models import StateFlowPolicy
from rllib_pirl.models.checkpoint import load_model, save_model
from rllib_pirl.sft import chunk_dataset, train_sft


def sign_demos(n: int, steps: int) -> list[Demo]:
    """``n`` demos of task "T" with uniform 3-D states and the expert action = the sign of the
    first state coordinate (two modes of behaviour), repeated over 2 action dims."""
    rng = np.random.default_rng(0)
    demos = []
    for _ in range(n):
        s = rng.uniform(-1, 1, (steps + 1, 3)).astype(np.float32)
        demos.append(Demo("T", s, np.repeat(np.sign(s[:steps, :1]), 2, axis=1).astype(np.float32)))
    return demos


def test_chunks_are_padded_by_repeating_the_last_action():
    actions = np.arange(8, dtype=np.float32).reshape(4, 2)
    demo = Demo("A", obs=np.arange(15, dtype=np.float32).reshape(5, 3), actions=actions)
    data = chunk_dataset([demo], ["B", "A"], chunk=3, state_dim=4)
    assert data["state"].shape == (4, 4) and torch.all(data["state"][:, 3] == 0)
    assert data["task_id"].view(-1).tolist() == [1, 1, 1, 1]
    assert data["actions"][0].tolist() == actions[0:3].tolist()
    assert data["actions"][3].tolist() == [actions[3].tolist()] * 3
    with pytest.raises(ValueError, match="not among the tasks"):
        chunk_dataset([demo], ["B"], 3, 4)


def test_sft_learns_a_state_dependent_chunk_and_writes_a_loadable_checkpoint(tmp_path):
    demos = sign_demos(40, steps=10)
    out = tmp_path / "ckpt"
    model = train_sft(demos, ["T"], str(out), chunk=2, steps=600, batch_size=128, hidden_sizes=(64, 64), log_every=600)
    loaded = load_model(str(out))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.allclose(loaded.action_std, torch.ones(2), atol=0.05)  # statistics of ±1 actions
    # The deterministic ODE policy reproduces the expert's sign.
    from rllib_pirl.flow import sample_chain

    obs = torch.tensor([[0.8, 0.0, 0.0], [-0.8, 0.0, 0.0]])
    with torch.no_grad():
        ctx = loaded.encode(obs)
        chain = sample_chain(lambda x, t: loaded.velocity(ctx, x, t), torch.zeros(2, 2, 2), 4)
        actions = loaded.unnormalize_actions(chain.actions)
    # The first action of the chunk follows the current state (later ones follow future states).
    assert actions[0, 0].min() > 0.5 and actions[1, 0].max() < -0.5


def test_checkpoints_that_do_not_fit_are_rejected(tmp_path):
    model = StateFlowPolicy(obs_dim=5, horizon=3, action_dim=2, hidden_sizes=(16, 16))
    save_model(model, str(tmp_path / "m"))
    act = gym.spaces.Box(-1, 1, (4, 2), np.float32)
    with pytest.raises(ValueError, match="fewer than the env's chunk 4 x 2"):
        load_model(str(tmp_path / "m"), gym.spaces.Box(-1, 1, (5,), np.float32), act)
    with pytest.raises(ValueError, match="expects a 5-D state, the env gives"):
        load_model(str(tmp_path / "m"), gym.spaces.Box(-1, 1, (6,), np.float32), gym.spaces.Box(-1, 1, (3, 2)))
    config_path = tmp_path / "m" / "config.json"
    resized = config_path.read_text().replace(
        '"hidden_sizes": [\n      16,\n      16\n    ]', '"hidden_sizes": [32, 32]'
    )
    assert resized != config_path.read_text()
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "config.json").write_text(resized)
    (tmp_path / "m2" / "model.safetensors").write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
    with pytest.raises(
        ValueError, match=r"shapes \(checkpoint, model\) \{.*'obs_encoder.0.weight': \(\(16, 5\), \(32, 5\)\)"
    ):
        load_model(str(tmp_path / "m2"))
    with pytest.raises(FileNotFoundError, match="not a model checkpoint"):
        load_model(str(tmp_path / "missing"))
    assert not (tmp_path / "m.tmp").exists()


def test_random_shift_crops_the_edge_padded_image_at_a_random_offset():
    from rllib_pirl.sft import random_shift

    images = torch.randint(0, 256, (64, 6, 5, 3), dtype=torch.uint8)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    offsets = set()
    for i in range(len(images)):
        (offset,) = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 6, dx : dx + 5], shifted[i].numpy())
        ]
        offsets.add(offset)
    assert len(offsets) > 10  # each image its own shift
    assert torch.equal(random_shift(images, 0, torch.Generator()), images)


def test_an_interrupted_sft_resumes_to_the_weights_of_the_uninterrupted_one(tmp_path, monkeypatch):
    from rllib_pirl.errors import UsageError
    from rllib_pirl.sft import SFT_STATE, saved_sft_setup

    demos, options = (
        sign_demos(12, steps=8),
        {"chunk": 2, "steps": 8, "batch_size": 16, "hidden_sizes": (16,), "log_every": 8},
    )
    train_sft(demos, ["T"], str(tmp_path / "whole"), save_every=3, **options)
    assert not (tmp_path / "whole" / SFT_STATE).exists()  # the finished checkpoint replaced the state

    calls, loss = [], StateFlowPolicy.flow_matching_loss

    def killed_at_step_5(self, obs, actions):  # the process dies in its 5th step
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return loss(self, obs, actions)

    monkeypatch.setattr(StateFlowPolicy, "flow_matching_loss", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_sft(demos, ["T"], str(tmp_path / "cut"), save_every=3, **options)
    monkeypatch.undo()
    assert saved_sft_setup(str(tmp_path / "cut"))["step"] == 3
    with pytest.raises(UsageError, match=r"was started with other options \(\(saved, now\): \{'steps': \(8, 9\)\}\)"):
        train_sft(demos, ["T"], str(tmp_path / "cut"), save_every=3, resume=True, **{**options, "steps": 9})
    train_sft(demos, ["T"], str(tmp_path / "cut"), save_every=3, resume=True, **options)
    whole, cut = load_model(str(tmp_path / "whole")).state_dict(), load_model(str(tmp_path / "cut")).state_dict()
    assert whole.keys() == cut.keys()
    for key in whole:
        assert torch.equal(whole[key], cut[key]), key
    assert not (tmp_path / "cut" / SFT_STATE).exists()
    # not a toy equality: the interrupted run's saved weights differ from the finished ones
    monkeypatch.setattr(StateFlowPolicy, "flow_matching_loss", killed_at_step_5)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        train_sft(demos, ["T"], str(tmp_path / "cut2"), save_every=3, **options)
    saved = torch.load(str(tmp_path / "cut2" / SFT_STATE), weights_only=False)["model"]
    assert any(not torch.equal(saved[k], whole[k]) for k in whole)
