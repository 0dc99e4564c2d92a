"""The trivial reconstructions of masked frames, the fixed measure and context_gain, on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from specbert.train.context import (
    DB_FLOOR,
    bin_mean,
    context_gain,
    db_error,
    interpolation,
    neighbour_mean,
    repetition,
    silence,
)


def ramp() -> tuple[torch.Tensor, torch.Tensor]:
    """One item, one channel, two bins, six frames; frames 2 and 3 unknown."""
    x = torch.tensor([[[[1.0, 2.0, 9.0, 9.0, 8.0, 6.0],
                        [0.0, 3.0, 9.0, 9.0, 0.0, 1.0]]]])
    known = torch.tensor([[True, True, False, False, True, True]])
    return x, known


def test_rules_fill_a_gap_from_the_known_frames_only():
    x, known = ramp()
    assert silence(x, known)[0, 0, :, 2:4].eq(0).all()
    torch.testing.assert_close(neighbour_mean(x, known)[0, 0, :, 2:4], torch.tensor([[5.0, 5.0], [1.5, 1.5]]))
    # frame 1 -> frame 4 in three steps: 2 -> 8 and 3 -> 0
    torch.testing.assert_close(interpolation(x, known)[0, 0, :, 2:4], torch.tensor([[4.0, 6.0], [2.0, 1.0]]))
    torch.testing.assert_close(bin_mean(x, known)[0, 0, :, 2:4], torch.tensor([[4.25, 4.25], [1.0, 1.0]]))
    for rule in (silence, neighbour_mean, interpolation, bin_mean):
        torch.testing.assert_close(rule(x, known)[..., known[0]], x[..., known[0]])  # known frames kept


def test_rules_at_the_edges_repeat_the_one_side_and_give_silence_without_any():
    x, _ = ramp()
    start = torch.tensor([[False, False, True, True, True, True]])
    for rule in (neighbour_mean, interpolation):
        torch.testing.assert_close(rule(x, start)[..., :2], x[..., 2:3].expand(-1, -1, -1, 2))
    nothing = torch.zeros(1, 6, dtype=torch.bool)
    for rule in (silence, neighbour_mean, interpolation, bin_mean):
        assert rule(x, nothing).eq(0).all()


def test_repetition_copies_the_stretch_whose_surroundings_match_the_gap_s():
    """A crop that repeats every 10 frames with a 4-frame gap: the copy of the stretch a period away is
    the hidden content, which no trivial rule finds; with nothing to copy, the interpolation stays."""
    g = torch.Generator().manual_seed(0)
    period = 0.01 + torch.rand(1, 2, 6, 10, generator=g)  # above the dB floor
    target = period.repeat(1, 1, 1, 4)  # 40 frames
    known = torch.ones(1, 40, dtype=torch.bool)
    known[0, 22:26] = False
    x = torch.where(known[:, None, None], target, torch.ones(()))  # white gap
    hidden = ~known
    assert db_error(repetition(x, known, context=2), target, hidden) < 1e-3
    assert db_error(repetition(x, known, reference=target), target, hidden) < 1e-3
    for rule in (interpolation, bin_mean):
        assert db_error(rule(x, known), target, hidden) > 1.0
    torch.testing.assert_close(repetition(x, known)[..., known[0]], target[..., known[0]])
    short = known[:, :8].clone()  # 8 frames, a 4-frame gap: no stretch 4 frames away fits with its context
    short[0, 2:6] = False
    torch.testing.assert_close(repetition(x[..., :8], short), interpolation(x[..., :8], short))


def test_neighbour_mean_and_interpolation_match_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 5, 12, generator=g)
    known = torch.rand(3, 12, generator=g) < 0.5
    means, lines = neighbour_mean(x, known), interpolation(x, known)
    for b in range(3):
        for t in range(12):
            left = [s for s in range(t + 1) if known[b, s]]
            right = [s for s in range(t, 12) if known[b, s]]
            if left and right:
                lo, hi = left[-1], right[0]
                mean = (x[b, ..., lo] + x[b, ..., hi]) / 2
                w = (t - lo) / (hi - lo) if hi > lo else 0.0
                line = (1 - w) * x[b, ..., lo] + w * x[b, ..., hi]
            elif left or right:  # one side only: its nearest frame
                mean = line = x[b, ..., left[-1] if left else right[0]]
            else:
                mean = line = torch.zeros(2, 5)
            torch.testing.assert_close(means[b, ..., t], mean)
            torch.testing.assert_close(lines[b, ..., t], line)


def test_db_error_counts_the_selected_frames_above_the_floor():
    target = torch.full((1, 1, 4, 3), 1e-2)  # -40 dB
    target[:, :, 0] = 1e-6  # -120 dB: below the floor
    pred = target * 10  # +20 dB everywhere
    frames = torch.tensor([[True, False, True]])
    below = 10 ** (DB_FLOOR / 20) * 10 ** (-2 / 20)  # pred of bin 0: -102 dB, still below the floor
    pred[:, :, 0] = below
    assert db_error(pred, target, frames).item() == pytest.approx(20.0 * 3 / 4, rel=1e-5)
    assert db_error(torch.zeros_like(target), target, frames).item() == pytest.approx(40.0 * 3 / 4, rel=1e-5)
    assert db_error(pred, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_context_gain_is_relative_to_the_best_rule():
    errors = {"model": 6.0, "silence": 30.0, "neighbours": 8.0, "interpolation": 7.5, "bin_mean": 10.0}
    assert context_gain(errors) == pytest.approx(0.2)
    assert context_gain({**errors, "model": 7.5}) == pytest.approx(0.0)
    assert context_gain({**errors, "model": 15.0}) < 0
