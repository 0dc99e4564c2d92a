"""The mask policy and next-segment pairs on synthetic crops (the loader tests use real shards)."""

import numpy as np
import pytest
import torch

from configs import ConfigError
from configs.loader import LoaderConfig
from pipeline.loader import loader_config
from pipeline.masking import (
    KEEP,
    NOISE,
    WHITE,
    apply_mask,
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


def test_apply_mask_kinds():
    target = crop()
    kinds = np.array([WHITE, 0, NOISE, KEEP, 0, 0, 0, WHITE], dtype=np.int8)
    masked = apply_mask(target, kinds, 8, np.random.default_rng(0))
    tokens, clean = masked.view(2, 16, 8, 8), target.view(2, 16, 8, 8)
    assert (tokens[:, :, [0, 7]] == 1.0).all()
    assert torch.equal(tokens[:, :, [1, 3, 4, 5, 6]], clean[:, :, [1, 3, 4, 5, 6]])
    assert (tokens[:, :, 2] >= clean[:, :, 2]).all() and not torch.equal(tokens[:, :, 2], clean[:, :, 2])
    assert torch.equal(target, crop())  # the target is not touched


def test_mask_sample_frames_align_to_tokens():
    cfg = LoaderConfig(crop_frames=64, token_frames=8, mask_rate=0.4)
    out = mask_sample({"target": crop()}, cfg, np.random.default_rng(2))
    per_token = out["masked"].view(8, 8)
    assert out["masked"].dtype == torch.bool and out["input"].shape == (2, 16, 64)
    assert (per_token.all(1) == per_token.any(1)).all()
    assert not per_token[list(seam_tokens(8))].any()


def test_separator_pattern():
    spec = crop(32, 1)
    write_separator(spec, 12, 20)
    assert (spec[:, 0::2, 12:20] == 1.0).all() and (spec[:, 1::2, 12:20] == 0.0).all()
    clean = crop(32, 1)
    assert torch.equal(spec[..., :12], clean[..., :12]) and torch.equal(spec[..., 20:], clean[..., 20:])


def test_next_segment_pairs_foreign_halves():
    cfg = LoaderConfig(crop_frames=64, token_frames=8)
    samples = [{"key": f"k{i}", "track": f"t{i % 5}", "target": crop(64, i)} for i in range(600)]
    out = list(next_segment_pairs(({**s, "target": s["target"].clone()} for s in samples), cfg,
                                  np.random.default_rng(3)))
    is_next = np.array([o["is_next"] for o in out])
    assert abs(is_next.mean() - 0.5) < 0.06
    for sample, o in zip(samples, out, strict=True):
        assert (o["pair_track"] == o["track"]) == o["is_next"]
        assert torch.equal(o["target"][..., :28], sample["target"][..., :28])
        seam = o["target"][..., 28:36]
        assert (seam[:, 0::2] == 1.0).all() and (seam[:, 1::2] == 0.0).all()
        second = o["target"][..., 36:]
        if o["is_next"]:
            assert torch.equal(second, sample["target"][..., 36:])
        else:  # the second half of an earlier crop of another track
            sources = [s["target"][..., 36:] for s in samples if s["track"] == o["pair_track"]]
            assert any(torch.equal(second, source) for source in sources)


def test_next_segment_off_passes_crops_unchanged():
    cfg = LoaderConfig(crop_frames=64, token_frames=8, next_segment=False)
    samples = [{"key": f"k{i}", "track": f"t{i}", "target": crop(64, i)} for i in range(20)]
    out = list(next_segment_pairs(iter(samples), cfg, np.random.default_rng(0)))
    assert all(o["is_next"] and torch.equal(o["target"], crop(64, i)) for i, o in enumerate(out))


def test_options_override_and_validate():
    assert loader_config(None, {"mask_rate": 0.4}).mask_rate == 0.4
    with pytest.raises(ConfigError, match="unknown config key 'loader.mask_ratio'"):
        loader_config(None, {"mask_ratio": 0.4})
    with pytest.raises(ConfigError, match="mask_white"):
        loader_config(None, {"mask_white": 0.5})
    with pytest.raises(ConfigError, match="next_segment"):
        loader_config(None, {"crop_frames": 16, "token_frames": 8})
