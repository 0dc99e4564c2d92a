"""benchmarks.quality's scoring: per-track scores agree with direct uSDR, the overall is their mean, and
the paired comparison counts the tracks each method wins."""

import numpy as np
import pytest
import soundfile as sf

from benchmarks.quality import STEMS, paired, score_methods
from specbert.inference.evaluate import find_tracks, usdr
from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import write_example_stems


def write_estimates(tracks: list[dict], out, noise: float, seed: int):
    """Each track's true stems plus white noise of ``noise`` times the stem's RMS, in the layout
    ``out/<track>/{accompaniment,vocals}.wav`` that ``score_methods`` reads."""
    rng = np.random.default_rng(seed)
    for track in tracks:
        folder = out / track["name"]
        folder.mkdir(parents=True)
        for file in STEMS.values():
            x = read_audio(track["files"][file])
            x = x + noise * np.sqrt(np.mean(x**2)) * rng.standard_normal(x.shape).astype(np.float32)
            sf.write(folder / f"{file}.wav", x.T, 44100, subtype="FLOAT")
    return out


def test_per_track_scores_and_the_paired_comparison(tmp_path):
    dataset = write_example_stems(tmp_path / "stems", seed=4, tracks=2, seconds=2.0, splits={"test": 2})
    tracks = find_tracks(dataset, "test")
    close = write_estimates(tracks, tmp_path / "close", noise=0.1, seed=0)  # ~20 dB
    far = write_estimates(tracks, tmp_path / "far", noise=0.5, seed=1)  # ~6 dB
    overall, per_track = score_methods(tracks, {"close": close, "far": far}, use_museval=False)

    for method, folder in (("close", close), ("far", far)):
        direct = [usdr(read_audio(t["files"]["accompaniment"]),
                       read_audio(folder / t["name"] / "accompaniment.wav")) for t in tracks]
        scores = [per_track[method][t["name"]]["instrumental"]["usdr"] for t in tracks]
        assert scores == pytest.approx(direct, abs=1e-3)
        assert overall[method]["instrumental"]["usdr"] == pytest.approx(np.mean(direct), abs=1e-3)
    assert set(per_track) == {"close", "far", "mixture", "irm"}
    assert paired(per_track["close"], per_track["far"]).startswith("ahead on 2 of 2 tracks")
    assert paired(per_track["far"], per_track["close"]).startswith("ahead on 0 of 2 tracks")
