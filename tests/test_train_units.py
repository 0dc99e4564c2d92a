"""The training pieces on their own: losses, schedule, RNG state, checkpoints (fast, no model)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from specbert.configs import ConfigError, load_config
from specbert.configs.train import TrainConfig
from specbert.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from specbert.train.losses import cut_tokens, discriminator_loss, frozen_call, generator_adv_loss, region_l1
from specbert.train.optim import build_optimizer, lr_factor
from specbert.train.rng import rng_state, seed_all, set_rng_state


def test_region_l1_weights_masked_and_unmasked_frames_separately():
    target = torch.zeros(1, 2, 4, 4)
    pred = torch.zeros(1, 2, 4, 4)
    pred[..., 0] = 1.0  # error 1 on frame 0 only
    selected = torch.tensor([[True, True, False, False]])
    masked, unmasked = region_l1(pred, target, selected)
    assert masked.item() == pytest.approx(0.5) and unmasked.item() == 0.0


def test_cut_tokens_takes_the_selected_tokens_of_every_item():
    spec = torch.arange(2 * 1 * 3 * 8, dtype=torch.float).reshape(2, 1, 3, 8)
    selected = torch.zeros(2, 8, dtype=torch.bool)
    selected[0, 4:8] = True
    selected[1, 0:4] = True
    tokens = cut_tokens(spec, selected, 4)
    assert tokens.shape == (2, 1, 3, 4)
    assert torch.equal(tokens[0], spec[0, :, :, 4:8]) and torch.equal(tokens[1], spec[1, :, :, 0:4])


def test_adversarial_losses_and_frozen_call():
    disc = nn.Linear(3, 1)
    fake = torch.randn(4, 3, requires_grad=True)
    generator_adv_loss(frozen_call(disc, fake)).backward()
    assert fake.grad is not None and disc.weight.grad is None  # the discriminator is not trained by it
    strong = torch.full((4,), 20.0)
    assert discriminator_loss(strong, -strong).item() < 1e-6 < discriminator_loss(-strong, strong).item()


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_lr_warms_up_linearly_then_decays_to_the_floor(schedule):
    cfg = TrainConfig(warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, 110) for s in range(111)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0) and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[60] == pytest.approx(0.55)  # half way: cosine and linear poly agree


def test_optimizer_decays_matrices_only():
    opt = build_optimizer(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), 1e-3, (0.9, 0.999), 0.1)
    decay, no_decay = opt.param_groups
    assert [p.ndim for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_effective_batch_sets_accumulation():
    cfg = load_config(None, ["train.batch_size=4", "train.effective_batch=32"])
    assert cfg.train.accumulation(1) == 8 and cfg.train.accumulation(2) == 4
    with pytest.raises(ValueError):
        cfg.train.accumulation(3)
    with pytest.raises(ConfigError):
        load_config(None, ["train.batch_size=3", "train.effective_batch=32"])


def test_rng_state_round_trips():
    seed_all(1)
    state = rng_state()
    draws = torch.rand(3), np.random.rand(3), random.random()
    seed_all(2)
    set_rng_state(state)
    again = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def _state(step: int) -> dict:
    return {"progress": {"step": step}, "rng": [rng_state()], "tensor": torch.arange(3)}


def test_checkpoints_round_trip_keep_the_last_k_and_point_to_the_latest(tmp_path):
    model = nn.Linear(4, 2)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"model": model}, _state(step), {"note": "x"}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]
    assert latest_checkpoint(tmp_path).name == "step_00000030"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    other = nn.Linear(4, 2)
    state, meta = load_checkpoint(latest_checkpoint(tmp_path), {"model": other})
    assert torch.equal(other.weight, model.weight) and state["progress"]["step"] == 30
    assert meta == {"step": 30, "note": "x"}
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(latest_checkpoint(tmp_path), {"model": nn.Linear(5, 2)})


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: code that would run if the checkpoint were unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    state = {"evil": _Payload(marker)}
    path = save_checkpoint(tmp_path / "ckpt", 1, {"model": nn.Linear(2, 2)}, state, {}, keep_last=1)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, {"model": nn.Linear(2, 2)})
    assert not marker.exists()
