"""MUSDB18 as distributed: ``.stem.mp4`` files (mixture, drums, bass, other, vocals as five AAC streams),
written here with ffmpeg from the example stems, read directly by ``specbert ingest-stems`` and
``specbert evaluate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specbert.configs import Config
from specbert.configs.model import ModelConfig
from specbert.inference.export import save_model_file
from specbert.model import build_model
from specbert.pipeline.audio import read_audio
from specbert.pipeline.example_library import write_example_stems
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.shards import iter_shard, to_complex
from specbert.pipeline.spectral import stft
from specbert.pipeline.stems import MUSDB_STREAMS

SPECBERT = str(Path(sys.executable).with_name("specbert"))


def write_stem_mp4(folder: Path, out: Path) -> Path:
    """The stems of a MUSDB18-HQ track folder as one ``.stem.mp4`` in MUSDB18's stream order."""
    inputs = [arg for name in MUSDB_STREAMS for arg in ("-i", str(folder / f"{name}.wav"))]
    maps = [arg for i in range(len(MUSDB_STREAMS)) for arg in ("-map", str(i))]
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *inputs, *maps, "-c:a", "aac", "-b:a", "256k",
                    str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def musdb18(tmp_path_factory) -> tuple[Path, Path]:
    """(MUSDB18-HQ folders, the same tracks as MUSDB18 .stem.mp4 files: two train, one test)."""
    root = tmp_path_factory.mktemp("musdb")
    hq = write_example_stems(root / "hq", tracks=3, seconds=3.0, splits={"train": 2, "test": 1})
    for track in sorted(hq.glob("*/*")):
        (root / "mp4" / track.parent.name).mkdir(parents=True, exist_ok=True)
        write_stem_mp4(track, root / "mp4" / track.parent.name / f"{track.name}.stem.mp4")
    return hq, root / "mp4"


def test_ingest_stems_reads_stem_mp4_files(musdb18, tmp_path):
    hq, mp4 = musdb18
    out = subprocess.run([SPECBERT, "ingest-stems", str(mp4), "--out", str(tmp_path / "shards"), "--config",
                          "tiny", "--workers", "1", "-q", "--set", "ingest.reserve_bytes=0",
                          "--set", "ingest.val_fraction=0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Dask LocalCluster" not in out.stderr and "track/s" not in out.stderr  # -q: no messages, no bar
    assert "ingested 3 tracks" in out.stdout and "0 failed" in out.stdout
    manifest = read_manifest(tmp_path / "shards" / "manifest.jsonl")
    tracks = {Path(t["path"]).name: t for t in manifest.tracks()}
    assert sorted(t["split"] for t in tracks.values()) == ["test", "train", "train"]
    for sample in (s for shard in manifest.shards() for s in iter_shard(shard["path"])):
        record = sample["record"]
        name = Path(record["source"]).name.removesuffix(".stem.mp4")
        assert record["artist"] == name.split(" - ")[0] and record["title"] == name.split(" - ")[1]
        folder = next(hq.glob(f"*/{name}"))
        span = slice(record["start_frame"], record["start_frame"] + record["frames"])
        for stem in ("mixture", "vocals", "accompaniment"):  # accompaniment = drums + bass + other
            got = to_complex(sample["stems"][stem])
            direct = stft(read_audio(folder / f"{stem}.wav"))[..., span]
            n = min(got.shape[-1], direct.shape[-1])  # AAC pads the end (by a frame here)
            assert got.shape[-1] - direct.shape[-1] in (0, 1, 2)
            got, direct = got[..., :n], direct[..., :n]
            # AAC at 256 kb/s (three streams summed for the accompaniment): within -20 dB of the lossless
            # STFT, where a stream out of step by one AAC frame would be near 0 dB
            assert np.linalg.norm(got - direct) < 10 ** (-20 / 20) * np.linalg.norm(direct), (name, stem)
    assert all(t["streams"] == {n: i for i, n in enumerate(MUSDB_STREAMS)} for t in tracks.values())


def test_evaluate_reads_stem_mp4_files_like_the_hq_folders(musdb18, tmp_path):
    hq, mp4 = musdb18
    cfg = Config()
    cfg.model = ModelConfig(channels=(4, 8), encoder_blocks=(0, 0), decoder_blocks=(0,), num_heads=4,
                            expansion=2)
    torch.manual_seed(0)
    model = save_model_file(build_model(cfg), cfg, tmp_path / "m.safetensors")
    reports = {}
    for name, dataset in (("hq", hq), ("mp4", mp4)):
        out = subprocess.run([SPECBERT, "evaluate", str(model), str(dataset), "-o", str(tmp_path / name),
                              "--no-museval", "-d", "cpu", "-q"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        reports[name] = json.loads((tmp_path / name / "evaluation.json").read_text())
    (track,) = reports["mp4"]["tracks"]
    assert track["name"] == reports["hq"]["tracks"][0]["name"] and track["name"].count(" - ") == 1
    for method in ("model", "mixture", "irm"):
        for stem in ("instrumental", "vocals"):  # the same music, once through AAC
            assert track[method][stem]["usdr"] == pytest.approx(
                reports["hq"]["tracks"][0][method][stem]["usdr"], abs=1.0), (method, stem)
