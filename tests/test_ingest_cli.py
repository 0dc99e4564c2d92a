"""``specbert ingest`` / ``inspect`` as a user runs them: subprocesses, a LocalCluster, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import render_song, write_example_library
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.shards import iter_shard

SPECBERT = str(Path(sys.executable).with_name("specbert"))
SETTINGS = ["--config", "tiny", "--set", "loader.crop_frames=64", "--set", "ingest.segment_frames=96",
            "--set", "ingest.reserve_bytes=0", "--no-progress"]


def specbert(*args, **kwargs):
    return subprocess.run([SPECBERT, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def make_bad_files(folder: Path, good_wav: Path) -> dict:
    """One file of each unusable kind; returns name -> (status, part of the reason)."""
    folder.mkdir(parents=True)
    (folder / "empty.flac").write_bytes(b"")
    (folder / "not audio.mp3").write_text("this is not an mp3\n" * 100)
    (folder / ".hidden.flac").write_bytes(good_wav.read_bytes())
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (folder / "missing.flac").symlink_to(folder / "nowhere.flac")
    wav = good_wav.read_bytes()
    (folder / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    wave = read_audio(good_wav).T
    sf.write(folder / "whole.mp3", wave, 44100)
    mp3 = (folder / "whole.mp3").read_bytes()
    (folder / "whole.mp3").unlink()
    (folder / "truncated.mp3").write_bytes(mp3[: len(mp3) // 2])
    sf.write(folder / "zero.wav", np.zeros((0, 2), np.float32), 44100)
    return {"empty.flac": ("failed", "empty file"), "not audio.mp3": ("failed", "cannot decode: not .mp3"),
            "missing.flac": ("failed", "unreadable"), "truncated.wav": ("failed", "truncated"),
            "truncated.mp3": ("failed", "truncated"), "zero.wav": ("failed", "zero duration")}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """One CLI run over two good songs, a song shorter than the training crop (0.5 s, 22 frames, against
    64) and one file of every bad kind."""
    root = tmp_path_factory.mktemp("bad")
    good = write_example_library(root / "lib", artists=1, albums_per_artist=1, songs_per_album=2, seconds=4.0,
                                 formats=("wav", "flac"))
    bad = make_bad_files(root / "lib" / "bad", good[0])
    sf.write(root / "lib" / "short.flac", read_audio(good[0])[:, :22050].T, 44100)
    out = specbert("ingest", root / "lib", "--out", root / "out", *SETTINGS)
    return out, bad, root / "out" / "manifest.jsonl"


def test_every_bad_file_is_reported_with_its_cause_and_the_exit_code_says_so(bad_run):
    out, bad, manifest = bad_run
    assert out.returncode == 1, out.stderr
    assert "ingested 3 tracks" in out.stdout and "6 failed" in out.stdout and "0 skipped" in out.stdout
    status = {Path(t["path"]).name: (t["status"], t["reason"]) for t in read_manifest(manifest).tracks()}
    for name, (expected, cause) in bad.items():
        assert status[name][0] == expected and cause in status[name][1], (name, status[name])
        line = next(line for line in out.stdout.splitlines() if name in line)
        assert cause in line and line.startswith(expected)
    assert "; 1 non-audio files ignored" in out.stdout and "; 1 hidden files or folders ignored" in out.stdout
    assert "Dask LocalCluster" in out.stderr  # an INFO message: shown by default (-q hides it)


def test_inspect_reports_counts_and_renders_a_png(bad_run, tmp_path):
    _, _, manifest = bad_run
    out = specbert("inspect", manifest, "--png", tmp_path / "sample.png")
    assert out.returncode == 0, out.stderr
    assert "tracks: 3 ok" in out.stdout and "6 failed" in out.stdout and "samples" in out.stdout
    assert (tmp_path / "sample.png").stat().st_size > 10_000
    shards = specbert("inspect", *(s["path"] for s in read_manifest(manifest).shards()))
    assert shards.returncode == 0 and "5 samples" in shards.stdout.replace("\n", " ")


def test_a_track_shorter_than_the_training_crop_is_stored_whole(bad_run):
    _, _, manifest = bad_run
    short = next(t for t in read_manifest(manifest).tracks() if t["path"].endswith("short.flac"))
    assert short["status"] == "ok" and short["frames"] == 1 + 22050 // 1024 and short["segments"] == 1


def distinct_songs(folder: Path, count: int, seconds: float = 6.0):
    """``count`` different FLAC files from one rendered song (gain and rotation vary)."""
    song = render_song(3, seconds=4.0)["mixture"]
    tiled = np.tile(song, (1, int(np.ceil(seconds / 4.0))))[:, : int(seconds * 44100)]
    for i in range(count):
        path = folder / f"Artist {i % 3}" / f"Album {i % 5}" / f"{i:02d} - Song.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (np.roll(tiled, 997 * i, axis=1) * (0.5 + i / count / 2)).T, 44100)


def shard_lines(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    return sum(1 for line in manifest.read_bytes().split(b"\n") if b'"shards":[{' in line)


def test_kill_9_then_rerun_gives_a_complete_duplicate_free_dataset(tmp_path):
    distinct_songs(tmp_path / "lib", 20)
    out, manifest = tmp_path / "out", tmp_path / "out" / "manifest.jsonl"
    args = [SPECBERT, "ingest", tmp_path / "lib", "--out", out, *SETTINGS, "--set", "ingest.shard_bytes=1"]
    run = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 240
    while shard_lines(manifest) == 0 and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and its Dask workers
    run.wait()
    before = {t["path"]: t["shards"] for t in read_manifest(manifest).tracks() if t["status"] == "ok"}
    assert before, "nothing was reported done before the kill"

    again = specbert("ingest", tmp_path / "lib", "--out", out, *SETTINGS, "--set", "ingest.shard_bytes=1")
    assert again.returncode == 0, again.stdout + again.stderr
    tracks = read_manifest(manifest).tracks()
    assert len(tracks) == 20 and all(t["status"] == "ok" for t in tracks)
    assert all({t["path"]: t["shards"] for t in tracks}[path] == shards for path, shards in before.items())
    listed = sorted(s["path"] for s in read_manifest(manifest).shards())
    assert sorted(str(p) for p in out.iterdir() if p.suffix == ".tar") == listed
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    keys = [s["key"] for path in listed for s in iter_shard(path)]
    assert len(keys) == len(set(keys)) == sum(t["segments"] for t in tracks)
    assert {k.split("_")[0] for k in keys} == {t["id"] for t in tracks}
    assert json.loads(manifest.read_text().splitlines()[0])["type"] == "config"
