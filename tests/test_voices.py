"""Synthetic voices (``pipeline.voices``) and ``specbert ingest-stems --synthetic-vocals``: an instrumental
library becomes stems whose accompaniment is each file as it is, whose vocals are a synthetic voice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import render_song, write_example_library
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.scan import read_tags
from specbert.pipeline.shards import iter_shard, to_complex
from specbert.pipeline.spectral import stft
from specbert.pipeline.voices import ACTIVE_DB, VOCAL_DB, vocals_for

SPECBERT = str(Path(sys.executable).with_name("specbert"))
SR = 44100
FRAME = 2048


def frame_power(wave: np.ndarray) -> np.ndarray:
    count = wave.shape[-1] // FRAME
    return (wave[..., : count * FRAME].reshape(*wave.shape[:-1], count, FRAME) ** 2).mean(axis=-1)


@pytest.fixture(scope="module")
def accompaniment() -> np.ndarray:
    return render_song(5, seconds=20.0)["accompaniment"].astype(np.float32)  # [2, N]


def test_a_voice_is_phrases_with_pauses_at_the_drawn_ratio_to_the_music(accompaniment):
    ratios = []
    for seed in range(4):
        vocals = vocals_for(accompaniment, seed, SR)
        assert vocals.shape == accompaniment.shape and vocals.dtype == np.float32
        voice = frame_power(vocals.mean(axis=0))
        active = voice > voice.max() * 10 ** (ACTIVE_DB / 10)
        assert 0.2 < active.mean() < 0.95, seed  # it sings or speaks, and pauses
        music = frame_power(accompaniment.mean(axis=0))[active].mean()
        ratios.append(10 * np.log10(voice[active].mean() / music))
        assert VOCAL_DB[0] - 0.01 < ratios[-1] < VOCAL_DB[1] + 0.01, seed
        assert np.array_equal(vocals, vocals_for(accompaniment, seed, SR))  # a function of its seed
    assert np.ptp(ratios) > 0.5  # the ratio is drawn, not fixed


def test_a_voice_is_harmonic_and_shaped_by_formants(accompaniment):
    vocals = vocals_for(accompaniment, 1, SR)[0]
    spectrum = np.abs(np.fft.rfft(vocals))
    hz = np.fft.rfftfreq(len(vocals), 1 / SR)
    below_top = spectrum[hz < 8500] ** 2
    assert below_top.sum() > 0.98 * (spectrum ** 2).sum()  # harmonics stop at 8 kHz; bursts are short
    voiced = vocals[np.argmax(frame_power(vocals)) * FRAME:][:FRAME]
    peaks = np.abs(np.fft.rfft(voiced * np.hanning(FRAME)))
    assert np.sort(peaks)[-20:].sum() > 0.4 * peaks.sum()  # a loud frame is a few partials, not noise


def test_ingest_stems_with_synthetic_vocals(tmp_path):
    library = tmp_path / "library"
    paths = write_example_library(library, artists=2, albums_per_artist=1, songs_per_album=2, seconds=4.0,
                                  formats=("flac", "ogg"))
    shards = tmp_path / "shards"
    command = [SPECBERT, "ingest-stems", str(library), "--synthetic-vocals", "--out", str(shards), "--config",
               "tiny", "--workers", "1", "-q", "--set", "ingest.reserve_bytes=0",
               "--set", "ingest.val_fraction=0"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ingested {len(paths)} tracks" in out.stdout and "0 failed" in out.stdout
    manifest = read_manifest(shards / "manifest.jsonl")
    assert manifest.config["kind"] == "stems" and manifest.config["ingest"]["synthetic_vocals"] is True
    samples = [s for shard in manifest.shards() for s in iter_shard(shard["path"])]
    assert {Path(s["record"]["source"]) for s in samples} == set(paths)
    for sample in samples:
        record, stems = sample["record"], {k: to_complex(v) for k, v in sample["stems"].items()}
        source = Path(record["source"])
        tags = read_tags(source, library)
        assert (record["artist"], record["album"], record["title"]) == (tags["artist"], tags["album"],
                                                                       tags["title"])
        span = slice(record["start_frame"], record["start_frame"] + record["frames"])
        direct = stft(read_audio(source))[..., span]
        scale = np.linalg.norm(direct)
        assert np.linalg.norm(stems["accompaniment"] - direct) < 1e-2 * scale  # the file as it is
        assert np.linalg.norm(stems["mixture"] - stems["accompaniment"] - stems["vocals"]) < 1e-2 * scale
        assert np.linalg.norm(stems["vocals"]) > 0.1 * scale  # a voice at -7..+3 dB where it sounds
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"{len(paths)} already done" in again.stdout, again.stdout + again.stderr


def test_synthetic_vocals_make_only_mixture_vocals_and_accompaniment(tmp_path):
    write_example_library(tmp_path / "library", artists=1, albums_per_artist=1, songs_per_album=1,
                          seconds=2.0, formats=("wav",))
    out = subprocess.run([SPECBERT, "ingest-stems", str(tmp_path / "library"), "--synthetic-vocals", "--out",
                          str(tmp_path / "shards"), "--set", "ingest.stems=[mixture,drums]"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "synthetic_vocals makes mixture, vocals and accompaniment" in out.stderr
