"""Example library: files decode as declared, stems add up exactly, seeds reproduce, music has structure."""

import re
import shutil
import subprocess

import mutagen
import numpy as np
import pytest
import soundfile as sf

from specbert.pipeline.example_library import render_song, write_example_library, write_example_stems

SR = 44100
SECONDS = 3.0
STEM_FILES = {"mixture", "vocals", "drums", "bass", "other", "accompaniment"}
FRAME_TOLERANCE = {"mp3": 2 * 1152}  # encoder delay/padding; the other formats are exact
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    paths = write_example_library(root, artists=2, albums_per_artist=2, songs_per_album=2, seconds=SECONDS)
    return root, paths


@pytest.fixture(scope="module")
def stems(tmp_path_factory):
    return write_example_stems(tmp_path_factory.mktemp("stems") / "musdb", tracks=4, seconds=SECONDS)


def _ffmpeg_decode(path, sr=SR):
    """Decode with ffmpeg to int16 [N, 2]."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", str(sr)]
    cmd.append("-")
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, "<i2").reshape(-1, 2)


def _decoded(path):
    return path.read_bytes() if path.suffix in (".wav", ".flac", ".mp3") else sf.read(path)[0].tobytes()


def _songs(seed, root):
    """One album with a song in each format."""
    return write_example_library(root, seed, artists=1, albums_per_artist=1, songs_per_album=4, seconds=1.0)


def test_library_layout_names_and_tags(library):
    root, paths = library
    assert len(paths) == 8 and all(p.is_file() for p in paths)
    assert {p.suffix for p in paths} == {".flac", ".mp3", ".ogg", ".wav"}
    assert len({p.parent.parent for p in paths}) == 2 and len({p.parent for p in paths}) == 4
    for path in paths:
        artist, album, name = path.relative_to(root).parts
        number, title = re.fullmatch(r"(\d\d) - ([A-Za-z ]+)\.\w+", name).groups()
        with sf.SoundFile(path) as f:
            assert (f.artist, f.album, f.title, f.tracknumber) == (artist, album, title, str(int(number)))


def test_library_files_decode_at_declared_format(library):
    for path in library[1]:
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (SR, 2)
        assert abs(info.frames - SECONDS * SR) <= FRAME_TOLERANCE.get(path.suffix[1:], 0), path
        audio = sf.read(path)[0]
        assert 0.02 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() < 0.99, path


@needs_ffmpeg
def test_library_files_decode_with_ffmpeg(library):
    for path in library[1]:
        assert abs(len(_ffmpeg_decode(path)) - SECONDS * SR) <= 2 * 1152, path


@needs_ffmpeg
def test_m4a_through_ffmpeg(tmp_path):
    (path,) = write_example_library(tmp_path, artists=1, albums_per_artist=1, songs_per_album=1, seconds=2.0,
                                    formats=("m4a",))
    assert path.suffix == ".m4a"
    assert mutagen.File(path, easy=True)["title"] == [re.sub(r"^\d\d - ", "", path.stem)]
    audio = _ffmpeg_decode(path)
    assert abs(len(audio) - 2 * SR) <= 2048 and np.abs(audio).max() > 1000


def test_a_long_ogg_is_written_whole(tmp_path):
    """libvorbis crashed the process (stack overflow) when 50 s went to soundfile in one write."""
    (path,) = write_example_library(tmp_path, artists=1, albums_per_artist=1, songs_per_album=1, seconds=50.0,
                                    formats=("ogg",))
    assert sf.info(str(path)).frames == 50 * SR


def test_library_is_deterministic_by_seed(tmp_path):
    first, again, other = _songs(0, tmp_path / "a"), _songs(0, tmp_path / "b"), _songs(1, tmp_path / "c")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in again]
    assert [_decoded(p) for p in first] == [_decoded(p) for p in again]
    assert {p.name for p in first}.isdisjoint(p.name for p in other)
    assert all(_decoded(p) != _decoded(q) for p, q in zip(first, other, strict=True))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_example_library(tmp_path, formats=("aiff",))


def test_stems_layout(stems):
    tracks = {split: sorted(p for p in (stems / split).iterdir()) for split in ("train", "test")}
    assert [len(tracks["train"]), len(tracks["test"])] == [3, 1]
    for track in tracks["train"] + tracks["test"]:
        assert " - " in track.name
        assert {p.stem for p in track.glob("*.wav")} == STEM_FILES
        for path in track.glob("*.wav"):
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "PCM_16")
            assert info.frames == SECONDS * SR


def test_stems_add_up_exactly(stems):
    for track in stems.glob("*/*"):
        x = {name: sf.read(track / f"{name}.wav", dtype="int16")[0].astype(np.int32) for name in STEM_FILES}
        assert np.array_equal(x["mixture"], x["vocals"] + x["accompaniment"])
        assert np.array_equal(x["accompaniment"], x["drums"] + x["bass"] + x["other"])
        assert np.abs(x["mixture"]).max() > 10000


def test_stems_are_deterministic_by_seed(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.wav"))}

    def mixtures(tracks):
        return {data for path, data in tracks.items() if path.stem == "mixture"}

    first = files(write_example_stems(tmp_path / "a", tracks=2, seconds=1.0))
    assert first == files(write_example_stems(tmp_path / "b", tracks=2, seconds=1.0))
    other = files(write_example_stems(tmp_path / "c", seed=1, tracks=2, seconds=1.0))
    assert set(first).isdisjoint(other) and mixtures(first).isdisjoint(mixtures(other))


def test_stem_splits(tmp_path):
    root = write_example_stems(tmp_path, tracks=3, seconds=0.5, splits={"train": 1, "valid": 2})
    assert sorted(len(list((root / split).iterdir())) for split in ("train", "valid")) == [1, 2]
    with pytest.raises(ValueError):
        write_example_stems(tmp_path, tracks=3, splits={"train": 1})


def test_render_song_contract():
    song = render_song(3, seconds=2.0, sample_rate=22050)
    assert set(song) == STEM_FILES
    assert all(x.shape == (2, 44100) and x.dtype == np.float32 for x in song.values())
    assert np.array_equal(song["accompaniment"], song["drums"] + song["bass"] + song["other"])
    assert np.array_equal(song["mixture"], song["vocals"] + song["accompaniment"])
    assert 0.5 < np.abs(song["mixture"]).max() <= 0.9 + 1e-6
    again = render_song(3, 2.0, 22050)
    assert all(np.array_equal(song[name], again[name]) for name in song)
    assert not np.allclose(song["mixture"], render_song(4, 2.0, 22050)["mixture"])


def _pitch_track(x, sr, frame=2048, hop=256):
    """f0 (Hz), periodicity (normalised autocorrelation peak) and RMS of Hann-windowed frames.

    The period is the first autocorrelation peak within 10 % of the highest (so no octave errors down).
    """
    window = np.hanning(frame)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop] * window
    acf = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]
    acf /= np.fft.irfft(np.abs(np.fft.rfft(window, 2 * frame)) ** 2)[:frame]  # undo the window's taper
    lo, hi = sr // 1000, sr // 80
    inner = acf[:, lo:hi]
    peaks = (inner > np.roll(inner, 1, axis=1)) & (inner >= np.roll(inner, -1, axis=1))
    lag = lo + np.argmax(peaks & (inner > 0.9 * inner.max(axis=1, keepdims=True)), axis=1)
    rows = np.arange(len(lag))
    y0, y1, y2 = acf[rows, lag - 1], acf[rows, lag], acf[rows, lag + 1]
    exact_lag = lag + np.clip(0.5 * (y0 - y2) / np.minimum(y0 - 2 * y1 + y2, -1e-12), -1, 1)
    return sr / exact_lag, y1 / np.maximum(acf[:, 0], 1e-12), np.sqrt(np.mean(frames**2, axis=1))


def _sustained_notes(log_f0, hop_s, skip_s=0.12, min_s=0.35):
    """Runs of voiced frames (``log_f0`` not NaN) moving < 4 % from frame to frame, minus their onset."""
    breaks = np.flatnonzero(~(np.abs(np.diff(log_f0)) < 0.04)) + 1
    runs = [run[int(skip_s / hop_s) :] for run in np.split(log_f0, breaks) if len(run) * hop_s > min_s]
    return [run for run in runs if not np.isnan(run).any()]


def test_vocals_are_sung_notes_with_vibrato():
    song = next(s for s in (render_song(seed, 8.0) for seed in range(10)) if np.abs(s["vocals"]).max() > 0)
    hop_s = 256 / SR
    f0, periodicity, rms = _pitch_track(song["vocals"].mean(axis=0), SR, hop=256)
    loud = rms > 0.1 * rms.max()
    voiced = loud & (periodicity > 0.8)
    assert voiced.sum() > 0.6 * loud.sum()  # harmonic, not noise
    assert (rms < 1e-4).sum() * hop_s > 0.5  # and silent in instrumental parts
    notes = _sustained_notes(np.where(voiced, np.log(f0), np.nan), hop_s)
    assert len(notes) >= 3
    assert 0.02 < np.median([np.exp(np.ptp(note)) - 1 for note in notes]) < 0.08  # pitch moves a few %
    rates = []
    for note in notes:
        t = np.arange(len(note)) * hop_s
        wobble = note - np.polyval(np.polyfit(t, note, 1), t)
        rates.append(np.sum(np.diff(np.sign(wobble)) != 0) / (2 * t[-1]))
    assert 3.5 < np.median(rates) < 8.0, rates  # at a vibrato rate of ~5-6 Hz


def test_drums_have_transients():
    drums = render_song(1, 4.0)["drums"].mean(axis=0)
    energy = np.square(drums[: len(drums) // 256 * 256]).reshape(-1, 256).sum(axis=1) + 1e-9
    onsets = np.flatnonzero(energy[1:] > 8 * energy[:-1])
    assert len(onsets) >= 2 * 4.0  # at least two hits a second
    assert np.abs(drums).max() > 5 * np.sqrt(np.mean(drums**2))  # peaky, not a steady noise
