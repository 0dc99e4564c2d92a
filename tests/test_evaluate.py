"""Evaluation: the SDRs match direct computations; the report has the model between floor and ceiling."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from specbert.cli import main
from specbert.configs import Config
from specbert.configs.model import ModelConfig
from specbert.inference.evaluate import museval_sdr, usdr
from specbert.inference.export import save_model_file
from specbert.inference.separate import Separator
from specbert.model import build_model
from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import render_song, write_example_stems


def with_noise(signal: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``signal`` plus white noise whose energy is exactly ``snr_db`` below the signal's."""
    noise = np.random.default_rng(seed).standard_normal(signal.shape)
    noise *= np.sqrt(np.sum(signal**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return (signal + noise).astype(np.float32)


def test_usdr_is_the_whole_track_energy_ratio():
    reference = render_song(0, seconds=2.0)["mixture"]
    assert usdr(reference, 0.9 * reference) == pytest.approx(20.0, abs=1e-4)  # error = 0.1 s
    assert usdr(reference, with_noise(reference, 7.0, seed=1)) == pytest.approx(7.0, abs=1e-3)
    assert usdr(reference, reference) > 90


def test_museval_sdr_of_a_known_noise_level():
    # Stationary references, so that every 1 s window has the same signal-to-noise ratio.
    t = np.arange(4 * 44100) / 44100
    chord = sum(np.sin(2 * np.pi * f * t + p) for f, p in ((220, 0), (277, 1), (330, 2)))
    hiss = np.random.default_rng(0).standard_normal((2, t.size))
    references = {"instrumental": np.stack([chord, 0.5 * chord]).astype(np.float32),
                  "vocals": (0.3 * hiss).astype(np.float32)}
    estimates = {name: with_noise(x, 10.0, seed=i) for i, (name, x) in enumerate(references.items())}
    scores = museval_sdr(references, estimates, 44100)
    for name in references:
        assert scores[name] == pytest.approx(10.0, abs=0.1), scores
    silent = {**estimates, "vocals": np.zeros_like(estimates["vocals"])}
    assert all(np.isnan(v) for v in museval_sdr(references, silent, 44100).values())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    cfg = Config()
    cfg.model = ModelConfig(channels=(4, 8), encoder_blocks=(0, 0), decoder_blocks=(0,), num_heads=4,
                            expansion=2)
    cfg.loader.crop_frames = 64
    torch.manual_seed(0)
    return save_model_file(build_model(cfg), cfg, tmp_path_factory.mktemp("model") / "m.safetensors")


def test_evaluate_command_reports_model_floor_and_ceiling(model_path, tmp_path):
    dataset = write_example_stems(tmp_path / "stems", seed=2, tracks=1, seconds=3.0, splits={"test": 1})
    result = CliRunner().invoke(main, ["evaluate", str(model_path), str(dataset), "-o", str(tmp_path / "out"),
                                       "--png", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert (tmp_path / "out" / "evaluation.png").stat().st_size > 0
    assert (tmp_path / "out" / "evaluation_spectrograms.png").stat().st_size > 10_000
    table = (tmp_path / "out" / "evaluation.md").read_text()
    for label in ("vocals uSDR (mean)", "instrumental museval SDR (median)", "mixture (floor)", "(ceiling)"):
        assert label in table

    (track,) = report["tracks"]
    folder = dataset / "test" / track["name"]
    mixture, vocals = read_audio(folder / "mixture.wav"), read_audio(folder / "vocals.wav")
    instrumental = read_audio(folder / "accompaniment.wav")
    estimate = Separator(model_path).separate(mixture, 44100)
    expected = {
        ("model", "vocals"): usdr(vocals, estimate["vocals"]),
        ("model", "instrumental"): usdr(instrumental, estimate["instrumental"]),
        ("mixture", "vocals"): usdr(vocals, mixture),
        ("mixture", "instrumental"): usdr(instrumental, mixture),
    }
    for (method, stem), value in expected.items():
        assert track[method][stem]["usdr"] == pytest.approx(value, abs=1e-4)
        assert report["overall"][method][stem]["usdr"] == pytest.approx(value, abs=1e-4)
    for stem in ("vocals", "instrumental"):
        ceiling, floor = report["overall"]["irm"][stem], report["overall"]["mixture"][stem]
        assert ceiling["usdr"] > floor["usdr"] + 5 and ceiling["museval_sdr"] > floor["museval_sdr"] + 5
