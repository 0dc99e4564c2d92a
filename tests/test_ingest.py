"""Ingest end to end on real files, real shards and a real Dask LocalCluster with 2 workers."""

import errno
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from specbert.configs import load_config
from specbert.pipeline import drives
from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import write_example_library, write_example_stems
from specbert.pipeline.ingest import ingest_library, ingest_stems
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.scan import identify, scan_library
from specbert.pipeline.shards import TarShard, decode_sample, iter_shard, iter_tar_shard, to_complex
from specbert.pipeline.spectral import stft
from specbert.pipeline.tasks import ShardJob, write_shard

SETTINGS = ["loader.crop_frames=64", "ingest.segment_frames=96", "ingest.reserve_bytes=0"]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """12 songs of 4 s (~173 frames: one 96-frame segment and a kept tail of ~77) in five formats."""
    root = tmp_path_factory.mktemp("library")
    write_example_library(root, seconds=4.0, formats=("flac", "mp3", "ogg", "wav", "m4a"))
    return root


def config(cluster, *extra):
    return load_config("tiny", [*SETTINGS, f"ingest.scheduler={cluster.scheduler_address}", *extra])


def quiet(_line):
    pass


def run(cluster, library, out, *extra, outs=None):
    summary = ingest_library([library], outs or [out], config(cluster, *extra), progress=False, log=quiet)
    return summary, read_manifest(Path(outs[0] if outs else out) / "manifest.jsonl")


def frames_of(spec, record):
    """The frames of a whole-track ``[..., T]`` spectrogram that a sample holds."""
    return spec[..., record["start_frame"] : record["start_frame"] + record["frames"]]


def samples_of(manifest):
    return [s for shard in manifest.shards() for s in iter_shard(shard["path"])]


def test_round_trip_equals_a_direct_stft_within_float16(cluster, library, tmp_path):
    summary, manifest = run(cluster, library, tmp_path, "ingest.codec=f16")
    assert summary.counts == Counter(ok=12) and summary.exit_code == 0
    samples = samples_of(manifest)
    assert len(samples) == 24 and len({s["key"] for s in samples}) == 24
    by_source = {}
    for s in samples:
        by_source.setdefault(s["record"]["source"], []).append(s)
    for source, parts in by_source.items():
        direct = np.abs(stft(read_audio(source)))
        assert [p["record"]["frames"] for p in parts] == [96, direct.shape[2] - 96]
        for p in parts:
            r = p["record"]
            ref = frames_of(direct, r)
            assert p["spec"].shape == (2, 1025, r["frames"]) and p["spec"].dtype == np.float16
            np.testing.assert_allclose(p["spec"].astype(np.float32), ref, rtol=2**-11, atol=2**-24)
            assert r["max_magnitude"] == pytest.approx(direct.max(), rel=1e-6)
            assert {"track_id", "artist", "album", "split", "source", "segment", "start_frame", "frames",
                    "sample_rate", "n_fft", "hop", "max_magnitude"} <= r.keys()


def test_default_codec_within_its_stated_error_and_webdataset_reads_the_tar(cluster, library, tmp_path):
    _, manifest = run(cluster, library, tmp_path)
    shard = manifest.shards()[0]["path"]
    raw = list(wds.WebDataset(shard, shardshuffle=False, empty_check=False))
    assert [r["__key__"] for r in raw] == [r["__key__"] for r in iter_tar_shard(shard)]
    assert all("." not in r["__key__"] for r in raw)
    direct = {}
    for sample in map(decode_sample, raw):
        r = sample["record"]
        if r["source"] not in direct:
            direct[r["source"]] = np.abs(stft(read_audio(r["source"])))
        ref = frames_of(direct[r["source"]], r)
        got = sample["spec"].astype(np.float32)
        kept = ref >= r["max_magnitude"] * 1.02e-5  # the floor is compared after rounding: +-1 step
        assert np.abs(20 * np.log10(got[kept] / ref[kept])).max() < 0.072
        assert np.all(got[ref < r["max_magnitude"] * 0.98e-5] == 0)


def test_zarr_and_tar_give_the_same_samples(cluster, library, tmp_path):
    _, tar = run(cluster, library, tmp_path / "tar")
    _, zarr = run(cluster, library, tmp_path / "zarr", "ingest.format=zarr")
    assert {s["format"] for s in zarr.shards()} == {"zarr"}
    assert all(Path(s["path"]).is_dir() for s in zarr.shards())
    a = {s["key"]: s for s in samples_of(tar)}
    b = {s["key"]: s for s in samples_of(zarr)}
    assert a.keys() == b.keys() and len(a) == 24
    for key in a:
        assert a[key]["record"] == b[key]["record"]
        assert np.array_equal(a[key]["spec"], b[key]["spec"])


def test_several_outputs_all_receive_shards_and_albums_do_not_leak(cluster, library, tmp_path):
    outs = [tmp_path / f"drive{i}" for i in range(3)]
    _, manifest = run(cluster, library, None, "ingest.shard_bytes=60000", "ingest.val_fraction=0.5",
                      "ingest.split_by=album", outs=outs)
    assert len(manifest.shards()) >= 6
    for out in outs:
        assert any(p.suffix == ".tar" for p in out.iterdir()), out
    sides = {}
    for track in manifest.tracks():
        sides.setdefault((track["artist"], track["album"]), set()).add(track["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {"train", "validation"} == {s for sides_ in sides.values() for s in sides_}
    for shard in manifest.shards():
        assert {s["record"]["split"] for s in iter_shard(shard["path"])} == {shard["split"]}


def test_no_artist_on_both_sides_by_default(cluster, library, tmp_path):
    _, manifest = run(cluster, library, tmp_path, "ingest.val_fraction=0.5")
    sides = {}
    for track in manifest.tracks():
        sides.setdefault(track["artist"], set()).add(track["split"])
    assert all(len(s) == 1 for s in sides.values())


def test_duplicates_are_ingested_once(cluster, library, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    original = sorted(lib.rglob("*.flac"))[0]
    shutil.copy(original, lib / "copy of a song.flac")
    summary, manifest = run(cluster, lib, tmp_path / "out")
    assert summary.counts == Counter(ok=12, skipped=1)
    copy = next(t for t in manifest.tracks() if t["path"].endswith("copy of a song.flac"))
    assert copy["status"] == "skipped" and copy["reason"] == f"duplicate of {original}"
    ids = [s["record"]["track_id"] for s in samples_of(manifest)]
    assert len(ids) == 24 and len(set(ids)) == 12


def test_rerun_skips_what_is_done_and_cleans_stale_files(cluster, library, tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "out"
    shutil.copytree(library, lib)
    first, manifest = run(cluster, lib, out)
    shard = Path(manifest.shards()[0]["path"])
    stale = [out / f".{shard.name}.partial", out / re.sub(r"-\d{6}-", "-000999-", shard.name)]
    for path in stale:
        shutil.copy(shard, path)
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"type": "batch", "shards": [], "tra')  # a writer killed mid-line
    write_example_library(lib / "New Artist", seed=7, artists=1, albums_per_artist=1, songs_per_album=1,
                          seconds=4.0, formats=("flac",))
    second, manifest = run(cluster, lib, out)
    assert (second.already, second.counts, second.removed) == (12, Counter(ok=1), 2)
    assert not any(p.exists() for p in stale)
    assert len(manifest.tracks()) == 13 and all(t["status"] == "ok" for t in manifest.tracks())
    on_disk = sorted(str(p) for p in out.glob("*.tar"))
    assert on_disk == sorted(s["path"] for s in manifest.shards())


def test_a_full_drive_is_dropped_without_losing_the_shard(library, tmp_path, monkeypatch):
    full, spare = tmp_path / "full", tmp_path / "spare"
    full.mkdir(), spare.mkdir()
    cfg = load_config("tiny", SETTINGS)
    items = [{**identify(i), "split": "train"} for i in scan_library([library])[0][:3]]
    real_write = TarShard.write

    def write_until_full(self, *args):
        if self.path.parent == full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, *args)

    monkeypatch.setattr(TarShard, "write", write_until_full)
    name = "train-000000-0123abcd.tar"
    result = write_shard(ShardJob(name, "train", tuple(items), (str(full), str(spare)), 1), cfg)
    assert result["full"] == [str(full)] and list(full.iterdir()) == []
    assert result["shard"]["path"] == str(spare / name) and result["shard"]["samples"] == 6
    assert [t["status"] for t in result["tracks"]] == ["ok"] * 3

    monkeypatch.setattr(drives, "free_bytes", lambda folder: 10 if folder == str(full) else 10**12)
    rotation = drives.Rotation([str(full), str(spare)], reserve=0)
    assert [rotation.order()[0] for _ in range(4)] == [str(spare)] * 4
    rotation = drives.Rotation([str(spare), str(tmp_path)], reserve=0)
    assert {rotation.order()[0] for _ in range(2)} == {str(spare), str(tmp_path)}


def test_stems_are_aligned_complex_and_remix_exactly(cluster, tmp_path):
    root = write_example_stems(tmp_path / "musdb", tracks=3, seconds=4.0)
    for track in (root / "train").iterdir():
        (track / "accompaniment.wav").unlink()  # derived from drums + bass + other instead
    cfg = config(cluster, "ingest.val_fraction=0")
    summary = ingest_stems([root], [tmp_path / "out"], cfg, progress=False, log=quiet)
    manifest = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert summary.counts == Counter(ok=3)
    assert sorted(t["split"] for t in manifest.tracks()) == ["test", "train", "train"]
    assert {s["kind"] for s in manifest.shards()} == {"stems"}
    for sample in samples_of(manifest):
        stems, r = sample["stems"], sample["record"]
        assert list(stems) == ["mixture", "vocals", "accompaniment"]
        mix, voc, acc = (to_complex(stems[k]) for k in stems)
        assert mix.shape == (2, 1025, r["frames"])
        direct = frames_of(stft(read_audio(Path(r["source"]) / "mixture.wav")), r)
        scale = r["max_magnitude"]
        assert np.abs(mix - direct).max() < scale * 2**-7
        assert np.abs(mix - voc - acc).max() < scale * 2**-6


def test_paired_folders_derive_vocals_and_report_unmatched_files(cluster, tmp_path):
    stems = write_example_stems(tmp_path / "musdb", tracks=2, seconds=3.0, splits={"train": 2})
    root = tmp_path / "paired"
    for i, track in enumerate(sorted((stems / "train").iterdir())):
        (root / "mixtures").mkdir(parents=True, exist_ok=True)
        (root / "instruments").mkdir(exist_ok=True)
        shutil.copy(track / "mixture.wav", root / "mixtures" / f"song {i}.wav")
        shutil.copy(track / "accompaniment.wav", root / "instruments" / f"song {i}.wav")
    shutil.copy(track / "mixture.wav", root / "mixtures" / "lonely.wav")
    cfg = config(cluster, "ingest.format=zarr", "ingest.codec=f16")
    summary = ingest_stems([root], [tmp_path / "out"], cfg, progress=False, log=quiet)
    manifest = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert summary.counts == Counter(ok=2, failed=1) and summary.exit_code == 1
    lonely = next(t for t in manifest.tracks() if t["status"] == "failed")
    assert lonely["reason"] == "no file named lonely.* in instruments/"
    sample = samples_of(manifest)[0]
    r = sample["record"]
    song = sorted((stems / "train").iterdir())[int(Path(r["source"]).stem[-1])]
    direct = frames_of(stft(read_audio(song / "vocals.wav")), r)
    assert np.abs(to_complex(sample["stems"]["vocals"]) - direct).max() < r["max_magnitude"] * 2**-9


CRASH_PRELOAD = '''
import os
from specbert.pipeline import tasks

real_load = tasks.LOAD.get("real", tasks.LOAD["spectrogram"])  # this may run twice in a worker


def crash_on_some_files(item, cfg):
    if "crash" in os.path.basename(item["path"]):
        os._exit(1)  # what a segfaulting decoder or the OOM killer does to a worker
    return real_load(item, cfg)


tasks.LOAD.update(real=real_load, spectrogram=crash_on_some_files)
'''


def test_a_worker_crash_fails_only_its_file(library, tmp_path):
    import dask
    from distributed import LocalCluster

    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(sorted(library.rglob("*.flac"))[0], lib / "good.flac")
    shutil.copy(sorted(library.rglob("*.ogg"))[0], lib / "crash.ogg")  # in the same shard: split, then alone
    (tmp_path / "crash_preload.py").write_text(CRASH_PRELOAD)
    # one death marks a task bad (the default is 4); a worker holds only the task it runs (as ingest's own)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                         silence_logs=logging.ERROR, preload=[str(tmp_path / "crash_preload.py")]) as crashy:
        summary, manifest = run(crashy, lib, tmp_path / "out")
    status = {Path(t["path"]).name: (t["status"], t["reason"]) for t in manifest.tracks()}
    assert status.pop("crash.ogg") == ("failed", "a worker died while processing it (crash or out of memory)")
    assert status == {"good.flac": ("ok", None)}
    assert summary.exit_code == 1


def test_segments_cover_every_frame_and_a_short_tail_joins_the_segment_before():
    from specbert.pipeline.tracks import segment_bounds

    assert segment_bounds(173, 96) == [(0, 96), (96, 77)]
    assert segment_bounds(230, 96) == [(0, 96), (96, 134)]  # a tail of 38 < 48 frames joins
    assert segment_bounds(20, 96) == [(0, 20)]  # a track shorter than a segment is one
    for frames in range(1, 500, 7):
        bounds = segment_bounds(frames, 96)
        assert [start for start, _ in bounds] == [sum(n for _, n in bounds[:i]) for i in range(len(bounds))]
        assert sum(n for _, n in bounds) == frames
        assert all(n >= 48 for _, n in bounds) or len(bounds) == 1
