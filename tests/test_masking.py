"""The mask policy and next-segment pairs on synthetic crops (the loader tests use real shards)."""

import numpy as np
import pytest
import torch

from specbert.configs import ConfigError
from specbert.configs.loader import LoaderConfig
from specbert.pipeline.loader import clip_to_peak, crop_halves, loader_config, write_crop
from specbert.pipeline.masking import (
    KEEP,
    NOISE,
    WHITE,
    mask_batch,
    mask_sample,
    next_segment_pairs,
    seam_tokens,
    select_tokens,
    write_separator,
)


def crop(frames=64, seed=0):
    values = np.random.default_rng(seed).random((2, 16, frames), dtype=np.float32) * 0.9
    return torch.from_numpy(values).half()


def test_selection_rate_and_split():
    cfg = LoaderConfig(crop_frames=1024, token_frames=16, mask_rate=0.3, mask_white=0.6, mask_noise=0.3,
                       mask_keep=0.1)
    rng = np.random.default_rng(0)
    kinds = np.stack([select_tokens(64, cfg, rng, exclude=seam_tokens(64)) for _ in range(2000)])
    assert not kinds[:, list(seam_tokens(64))].any()
    selected = kinds[kinds > 0]
    assert abs((kinds > 0).sum() / (2000 * 62) - 0.3) < 0.01  # P(none) = 0.7**62 is negligible
    for kind, share in ((WHITE, 0.6), (NOISE, 0.3), (KEEP, 0.1)):
        assert abs(np.mean(selected == kind) - share) < 0.015


def test_at_least_one_token_is_selected():
    cfg = LoaderConfig(crop_frames=64, token_frames=8, mask_rate=1e-6)
    rng = np.random.default_rng(1)
    counts = [(select_tokens(8, cfg, rng, exclude=(3, 4)) > 0).sum() for _ in range(200)]
    assert set(counts) == {1}


def test_mask_batch_kinds():
    target = torch.stack([crop(), crop(seed=1)])  # [2, C, bins, 64 frames]: 8 tokens of 8
    kinds = torch.tensor([[WHITE, 0, NOISE, KEEP, 0, 0, 0, WHITE], [0, NOISE, 0, 0, 0, 0, 0, 0]],
                         dtype=torch.int8)
    masked = mask_batch(target, kinds, torch.tensor([5, 6]), 8)
    tokens, clean = masked.view(2, 2, 16, 8, 8), target.view(2, 2, 16, 8, 8)
    assert (tokens[0, :, :, [0, 7]] == 1.0).all()
    assert torch.equal(tokens[0, :, :, [1, 3, 4, 5, 6]], clean[0, :, :, [1, 3, 4, 5, 6]])
    for i, t in ((0, 2), (1, 1)):  # noise: max(noise, original), not the original
        assert (tokens[i, :, :, t] >= clean[i, :, :, t]).all() and not torch.equal(tokens[i, :, :, t],
                                                                                   clean[i, :, :, t])
    assert torch.equal(tokens[1, :, :, [0, 2, 3, 4, 5, 6, 7]], clean[1, :, :, [0, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(target, torch.stack([crop(), crop(seed=1)])), "the target is left as it was"


def test_mask_batch_noise_follows_each_crops_seed():
    """A crop's noise depends on its own seed, not on its batch mates or its place in the batch."""
    target = torch.stack([crop(), crop(seed=1)])
    kinds = torch.tensor([[NOISE] + [0] * 7, [NOISE] + [0] * 7], dtype=torch.int8)
    both = mask_batch(target, kinds, torch.tensor([5, 6]), 8)
    alone = mask_batch(target[1:], kinds[1:], torch.tensor([6]), 8)
    other_seed = mask_batch(target[1:], kinds[1:], torch.tensor([7]), 8)
    assert torch.equal(both[1], alone[0]) and not torch.equal(alone, other_seed)


def test_mask_sample_frames_align_to_tokens():
    cfg = LoaderConfig(crop_frames=64, token_frames=8, mask_rate=0.4)
    out = mask_sample({"key": "k"}, cfg, np.random.default_rng(2))
    per_token = out["masked"].view(8, 8)
    assert out["masked"].dtype == torch.bool and out["kinds"].shape == (8,)
    assert torch.equal(per_token.any(1), out["kinds"] > 0)
    assert (per_token.all(1) == per_token.any(1)).all()
    assert not per_token[list(seam_tokens(8))].any()


def test_separator_pattern():
    spec = crop(32, 1)
    write_separator(spec, 12, 20)
    assert (spec[:, 0::2, 12:20] == 1.0).all() and (spec[:, 1::2, 12:20] == 0.0).all()
    clean = crop(32, 1)
    assert torch.equal(spec[..., :12], clean[..., :12]) and torch.equal(spec[..., 20:], clean[..., 20:])


def segment_sample(i: int, tracks: int = 5, frames: int = 96) -> dict:
    """A decoded segment as ``decode_sample`` gives it: float16 ``[C, F + 1, T]`` (16 bins the model sees
    and a Nyquist bin) frames-major, its peak 2."""
    bins = np.concatenate([crop(frames, i).numpy(), np.full((2, 1, frames), 0.5, np.float16)], axis=1)
    spec = np.ascontiguousarray(bins.transpose(0, 2, 1)).transpose(0, 2, 1) * 2
    return {"key": f"k{i}", "spec": spec, "record": {"track_id": f"t{i % tracks}", "max_magnitude": 2.0}}


def write(sample: dict, cfg: LoaderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop's target and masked input, as the loader's batch has them."""
    target = torch.empty(2, 16, cfg.crop_frames, dtype=torch.float16)
    write_crop(sample, cfg, target)
    masked_input = mask_batch(target[None], sample["kinds"][None], torch.tensor([sample["noise_seed"]]),
                              cfg.token_frames)
    return target, masked_input[0]


def test_next_segment_pairs_foreign_halves():
    cfg = LoaderConfig(crop_frames=64, token_frames=8)
    rng = np.random.default_rng(3)
    segments = [segment_sample(i) for i in range(600)]
    crops = [crop_halves(s, 64, 0.5, rng) for s in segments]
    out = [mask_sample(o, cfg, rng) for o in next_segment_pairs(iter(crops), cfg, rng)]
    is_next = np.array([o["is_next"] for o in out])
    assert abs(is_next.mean() - 0.5) < 0.06
    for c, o in zip(crops, out, strict=True):
        assert (o["pair_track"] == o["track"]) == o["is_next"]
        first, second = c["halves"]
        target, masked_input = write(o, cfg)
        clean = torch.empty(2, 16, 32, dtype=torch.float16)
        first.write(clean)
        assert torch.equal(target[..., :28], clean[..., :28])
        for x in (target, masked_input):
            seam = x[..., 28:36]
            assert (seam[:, 0::2] == 1.0).all() and (seam[:, 1::2] == 0.0).all()
        if o["is_next"]:
            second.write(clean)
            assert torch.equal(target[..., 36:], clean[..., 4:])
        else:  # the second half of an earlier crop of another track
            assert any(o["halves"][1] is p["halves"][1] for p in crops if p["track"] == o["pair_track"])
        unselected = np.repeat(o["kinds"].numpy() == 0, 8)
        assert torch.equal(masked_input[..., unselected], target[..., unselected])


def test_crop_is_the_normalised_window_with_channels_swapped():
    sample = segment_sample(7)
    spec = torch.from_numpy(sample["spec"]).float()
    for swap in (0.0, 1.0):
        halves = crop_halves(sample, 64, swap, np.random.default_rng(0))["halves"]
        out = torch.empty(2, 16, 32, dtype=torch.float16)
        halves[1].write(out)
        start = halves[1].start
        expected = (spec[:, :16, start : start + 32] / 2).clamp(0, 1)
        assert torch.equal(out.float(), (expected.flip(0) if swap else expected).half().float())


def test_a_silent_track_crops_to_zeros():
    """A digitally silent track is ingested with peak 0; its crops are 0, not a division error."""
    record = {"track_id": "t", "max_magnitude": 0.0}
    sample = {"key": "k", "spec": np.zeros((2, 17, 96), np.float16), "record": record}
    halves = crop_halves(clip_to_peak(sample), 64, 0.5, np.random.default_rng(0))["halves"]
    out = torch.ones(2, 16, 32, dtype=torch.float16)
    halves[0].write(out)
    assert torch.equal(out, torch.zeros_like(out))


def test_next_segment_off_passes_crops_unchanged():
    cfg = LoaderConfig(crop_frames=64, token_frames=8, next_segment=False)
    rng = np.random.default_rng(0)
    crops = [crop_halves(segment_sample(i, tracks=20), 64, 0.0, rng) for i in range(20)]
    out = list(next_segment_pairs(iter(crops), cfg, rng))
    assert all(o["is_next"] and o["halves"][1] is c["halves"][1] for c, o in zip(crops, out, strict=True))
    target, _ = write(mask_sample(out[0], cfg, rng), cfg)
    start = out[0]["halves"][0].start
    spec = torch.from_numpy(segment_sample(0, tracks=20)["spec"])
    assert torch.equal(target, (spec[:, :16, start : start + 64] / 2).clamp(0, 1))


def test_options_override_and_validate():
    assert loader_config(None, {"mask_rate": 0.4}).mask_rate == 0.4
    with pytest.raises(ConfigError, match="unknown config key 'loader.mask_ratio'"):
        loader_config(None, {"mask_ratio": 0.4})
    with pytest.raises(ConfigError, match="mask_white"):
        loader_config(None, {"mask_white": 0.5})
    with pytest.raises(ConfigError, match="next_segment"):
        loader_config(None, {"crop_frames": 16, "token_frames": 8})
