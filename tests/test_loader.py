"""The pretraining loader on real shards written by the ingest code (tar) and the same samples as zarr.

The session fixture ingests a small generated library (12 tracks of 12 s, segments of 256 frames,
one track per shard: 8 train shards, 4 validation shards); crops are 128 frames, tokens 8 frames.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specbert.configs import ConfigError, load_config
from specbert.pipeline.codecs import get_codec
from specbert.pipeline.loader import build_pretrain_loader
from specbert.pipeline.manifest import ManifestWriter, read_manifest
from specbert.pipeline.shards import ZarrShard, decode_sample, iter_shard, iter_tar_shard
from specbert.pipeline.spectral import normalise

CROP, TOKEN, BINS = 128, 8, 1024
INGEST = [  # one track per shard; half the artists (1 of 3 here) held out for validation
    "ingest.segment_frames=256", "ingest.shard_bytes=1", "ingest.val_fraction=0.5", "ingest.split_by=artist",
    "ingest.workers=1", f"loader.crop_frames={CROP}", f"loader.token_frames={TOKEN}",
]


def write_manifest(path: Path, config: dict, shards: list[dict]) -> Path:
    with ManifestWriter(path, config) as writer:
        writer.append({"type": "batch", "shards": shards, "tracks": []})
    return path


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="session")
def tar_manifest(tmp_path_factory) -> Path:
    from specbert.pipeline.example_library import write_example_library  # not imported by the DDP processes
    from specbert.pipeline.ingest import ingest_library

    root = tmp_path_factory.mktemp("loader")
    write_example_library(root / "library", seed=0, artists=3, albums_per_artist=2, songs_per_album=2,
                          seconds=12.0)
    summary = ingest_library([root / "library"], [root / "shards"], load_config("tiny", INGEST),
                             progress=False, log=lambda line: None)
    return summary.manifest


@pytest.fixture(scope="session")
def zarr_manifest(tar_manifest, tmp_path_factory) -> Path:
    """The same samples rewritten as zarr shards (the ingest's zarr writer), in the same manifest order.
    The decoded values are stored as they are (lossless "f16"): quantising twice can move values at
    the codec's floor."""
    out = tmp_path_factory.mktemp("zarr")
    manifest = read_manifest(tar_manifest)
    codec = get_codec(manifest.config["ingest"]["codec"])
    shards = []
    for shard in manifest.shards():
        path = out / Path(shard["path"]).with_suffix(".zarr").name
        writer = ZarrShard(path, get_codec("f16"))
        for raw in iter_tar_shard(shard["path"]):
            record = json.loads(raw["json"])
            writer.write(raw["__key__"], record, {"spec": codec.decode(raw["spec"], record["shape"])})
        shards.append({**shard, "path": str(path), "format": "zarr", "bytes": writer.commit()})
    return write_manifest(out / "manifest.jsonl", manifest.config, shards)


def loader(manifest, split="train", **options):
    options = {"batch_size": 8, "num_workers": 0, "config": load_config("tiny", INGEST), **options}
    return build_pretrain_loader(manifest, split=split, **options)


def take(batches, n: int) -> list[dict]:
    out = []
    for batch in batches:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_batches_have_the_documented_layout(tar_manifest):
    train = loader(tar_manifest, batch_size=4, epoch_batches=3)
    batches = list(train)
    assert len(batches) == len(train) == 3
    batch = batches[0]
    assert batch["input"].shape == batch["target"].shape == (4, 2, BINS, CROP)
    assert batch["input"].dtype == batch["target"].dtype == torch.float16
    assert batch["masked"].shape == (4, CROP) and batch["masked"].dtype == torch.bool
    assert batch["is_next"].shape == (4,) and batch["is_next"].dtype == torch.bool
    assert batch["kinds"].shape == (4, CROP // TOKEN) and batch["kinds"].dtype == torch.int8
    assert len(batch["key"]) == len(batch["track"]) == len(batch["pair_track"]) == 4
    assert 0 <= batch["target"].min() and batch["target"].max() <= 1
    assert train.stats() == {"bad_shards": 0, "bad_samples": 0, "padded_segments": 0}


def test_options_are_checked(tar_manifest):
    with pytest.raises(ConfigError, match="mask_ratio"):
        loader(tar_manifest, mask_ratio=0.3)
    with pytest.raises(ConfigError, match="no spectrogram shards in split 'val'.*validation"):
        loader(tar_manifest, split="val")
    with pytest.raises(ConfigError, match="shorter than crop_frames"):
        loader(tar_manifest, crop_frames=512)


def test_a_track_shorter_than_the_crop_is_padded_with_silence_and_counted(tmp_path, caplog):
    """Ingest stores a 1 s song (44 frames) whatever the crop; the loader pads its crops after its end."""
    from specbert.pipeline.example_library import write_example_library
    from specbert.pipeline.ingest import ingest_library

    write_example_library(tmp_path / "library", artists=1, albums_per_artist=1, songs_per_album=1,
                          seconds=1.0, formats=("flac",))
    cfg = load_config("tiny", [*INGEST, "ingest.val_fraction=0"])
    summary = ingest_library([tmp_path / "library"], [tmp_path / "shards"], cfg, progress=False,
                             log=lambda line: None)
    (track,) = read_manifest(summary.manifest).tracks()
    assert track["status"] == "ok" and track["frames"] == 44 < CROP
    with caplog.at_level("WARNING", logger="specbert.pipeline.loader"):
        train = loader(summary.manifest, batch_size=2, epoch_batches=2, next_segment=False, channel_swap=0.0)
    assert "1 tracks are shorter than the 128-frame crop" in caplog.text
    batches = list(train)
    for batch in batches:
        target = batch["target"].float()
        assert target[..., :44].amax(dim=(1, 2, 3)).min() > 0.1  # the song...
        assert not target[..., 44:].any()  # ...then silence
    assert train.stats()["padded_segments"] >= 1  # once per decoded segment


def token_kinds(batch: dict) -> np.ndarray:
    """Infer each token's kind from the data: 0 unselected, 1 white, 2 noise, 3 kept; checks each kind."""
    b = len(batch["key"])
    x = batch["input"].unflatten(-1, (-1, TOKEN)).transpose(1, 3)  # [B, n, C, F, k] -> tokens first
    y = batch["target"].unflatten(-1, (-1, TOKEN)).transpose(1, 3)
    selected = batch["masked"].view(b, -1, TOKEN)
    assert (selected.all(-1) == selected.any(-1)).all(), "masks align to token boundaries"
    kinds = np.zeros(selected.shape[:2], np.int8)
    for i, t in zip(*np.nonzero(selected.any(-1).numpy()), strict=True):
        same, white = torch.equal(x[i, t], y[i, t]), bool((x[i, t] == 1.0).all())
        kinds[i, t] = 3 if same else 1 if white else 2
        if kinds[i, t] == 2:
            assert (x[i, t] >= y[i, t]).all(), "noise tokens are max(noise, original)"
    unselected = ~selected.any(-1)
    assert torch.equal(x[unselected], y[unselected]), "unselected tokens are the target"
    return kinds


def test_span_masking_statistics(tar_manifest):
    batches = list(loader(tar_manifest, epoch_batches=50))  # 400 crops, 16 tokens each, 14 eligible
    kinds = np.concatenate([token_kinds(batch) for batch in batches])
    n_tokens, seam = CROP // TOKEN, [CROP // TOKEN // 2 - 1, CROP // TOKEN // 2]
    assert not kinds[:, seam].any(), "the seam tokens are never selected"
    eligible = n_tokens - 2
    expected = 0.15 + 0.85**eligible / eligible  # at least one token per crop
    assert abs((kinds > 0).sum() / (len(kinds) * eligible) - expected) < 0.02
    selected = kinds[kinds > 0]
    assert abs(np.mean(selected == 1) - 0.8) < 0.05
    assert abs(np.mean(selected == 2) - 0.1) < 0.04
    assert abs(np.mean(selected == 3) - 0.1) < 0.04


def test_a_higher_mask_rate_and_split_are_configuration(tar_manifest):
    batches = list(loader(tar_manifest, epoch_batches=10, mask_rate=0.6, mask_white=0.2, mask_noise=0.4,
                          mask_keep=0.4))
    selected = np.concatenate([token_kinds(batch) for batch in batches])
    assert abs((selected > 0).mean() * 16 / 14 - 0.6) < 0.06
    assert abs(np.mean(selected[selected > 0] == 1) - 0.2) < 0.07


def test_the_white_value_is_configuration(tar_manifest):
    """``mask_value``: what a white token's bins become, written by the workers or where batches are used."""
    for where in ({}, {"device": "cpu", "input_on_device": True}):
        batch = next(iter(loader(tar_manifest, epoch_batches=1, mask_value=0.0, **where)))
        white = (batch["kinds"] == 1).repeat_interleave(TOKEN, dim=1)  # [B, T]
        assert white.any() and (batch["input"].permute(0, 3, 1, 2)[white] == 0).all()
        assert (batch["target"].permute(0, 3, 1, 2)[white] > 0).any()


def frame_owners(manifest: Path) -> dict[bytes, set[str]]:
    """Every normalised frame ``[C, bins]`` of every train segment (either channel order) -> its tracks."""
    owners: dict[bytes, set[str]] = {}
    for shard in read_manifest(manifest).shards("train"):
        for sample in iter_shard(shard["path"]):
            spec = normalise(torch.from_numpy(sample["spec"][:, :BINS]), sample["record"]["max_magnitude"])
            for frames in (spec, spec.flip(0)):
                for frame in frames.permute(2, 0, 1).numpy():
                    owners.setdefault(frame.tobytes(), set()).add(sample["record"]["track_id"])
    return owners


def test_pairs_separator_and_foreign_halves(tar_manifest):
    batches = list(loader(tar_manifest, epoch_batches=20))
    half, width = CROP // 2, TOKEN // 2
    owners = frame_owners(tar_manifest)
    is_next = torch.cat([batch["is_next"] for batch in batches])
    assert abs(is_next.float().mean().item() - 0.5) < 0.1
    for batch in batches:
        for name in ("input", "target"):
            seam = batch[name][..., half - width : half + width]
            assert (seam[:, :, 0::2] == 1.0).all() and (seam[:, :, 1::2] == 0.0).all(), "separator"
        assert not batch["masked"][:, half - width : half + width].any()
        for i, (track, pair) in enumerate(zip(batch["track"], batch["pair_track"], strict=True)):
            assert (track == pair) == bool(batch["is_next"][i])
            frames = batch["target"][i].permute(2, 0, 1).numpy()  # [T, C, bins]
            for t in (0, half - width - 1):
                assert track in owners[frames[t].tobytes()]
            for t in (half + width, CROP - 1):
                assert pair in owners[frames[t].tobytes()]


def test_next_segment_can_be_switched_off(tar_manifest):
    batch = next(iter(loader(tar_manifest, epoch_batches=1, next_segment=False)))
    assert batch["is_next"].all() and batch["track"] == batch["pair_track"]


def test_same_seed_same_batches_and_fixed_validation(tar_manifest):
    a = take(loader(tar_manifest, num_workers=2, seed=3, epoch_batches=4), 4)
    b = take(loader(tar_manifest, num_workers=2, seed=3, epoch_batches=4), 4)
    c = take(loader(tar_manifest, num_workers=2, seed=4, epoch_batches=4), 4)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        assert all(torch.equal(x[k], y[k]) for k in ("input", "target", "masked", "is_next"))
    assert [x["key"] for x in a] != [x["key"] for x in c]
    validation = loader(tar_manifest, split="validation", num_workers=2)
    first, second = list(validation), list(validation)
    assert sum(len(x["key"]) for x in first) == 8  # 4 tracks x 2 segments, each once per pass
    assert [x["key"] for x in first] == [x["key"] for x in second]
    assert all(torch.equal(x["input"], y["input"]) for x, y in zip(first, second, strict=True))


def test_input_built_after_the_workers_equals_the_workers_input(tar_manifest):
    """On a GPU the masked input is built on the device from the target, the token kinds and the noise
    seeds (the workers ship only the target); on one device it is the input the workers write."""
    a = take(loader(tar_manifest, num_workers=2, seed=6, epoch_batches=3), 3)
    on_device = loader(tar_manifest, num_workers=2, seed=6, epoch_batches=3, device="cpu",
                       input_on_device=True)
    b = take(on_device, 3)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"] and x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in ("input", "target", "masked", "kinds", "is_next"))
    assert any((x["kinds"] == 2).any() for x in a), "some noise tokens were compared"
    shipped = next(iter(on_device.loader))  # what a worker sent: the target, not the input
    assert "input" not in shipped and "input" not in shipped["ring"][2] and "target" in shipped["ring"][2]


def test_zarr_shards_give_the_same_batches_as_tar(tar_manifest, zarr_manifest):
    a = take(loader(tar_manifest, seed=5, epoch_batches=3), 3)
    b = take(loader(zarr_manifest, seed=5, epoch_batches=3), 3)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["target"], y["target"])


def flip_bytes(path: str, members: int | None = 1) -> list[str]:
    """Flip 16 bytes in the middle of the first ``members`` data members (None: all) of a tar shard,
    where only a checksum can tell (the compressed stream); return their sample keys."""
    with tarfile.open(path) as archive:
        data = [m for m in archive if m.name.endswith(".spec")][:members]
    with open(path, "r+b") as f:
        for member in data:
            f.seek(member.offset_data + member.size // 2)
            flipped = bytes(b ^ 0xFF for b in f.read(16))
            f.seek(member.offset_data + member.size // 2)
            f.write(flipped)
    return [m.name.partition(".")[0] for m in data]


def copy_shards(manifest: Path, out: Path, n: int | None = None) -> list[dict]:
    shards = []
    for shard in read_manifest(manifest).shards("train")[:n]:
        path = out / Path(shard["path"]).name
        shutil.copy(shard["path"], path)
        shards.append({**shard, "path": str(path)})
    return shards


def test_corrupt_shards_are_skipped_and_counted(tar_manifest, tmp_path):
    """Three train shards: one with bytes flipped in its first data member, one truncated, one intact."""
    shards = copy_shards(tar_manifest, tmp_path, 3)
    [corrupt] = flip_bytes(shards[0]["path"])
    os.truncate(shards[1]["path"], os.path.getsize(shards[1]["path"]) // 2)
    manifest = write_manifest(tmp_path / "manifest.jsonl", read_manifest(tar_manifest).config, shards)
    with pytest.raises(ValueError, match="checksum mismatch"):
        next(iter_shard(shards[0]["path"]))
    train = loader(manifest, batch_size=4, epoch_batches=8)
    with pytest.warns(RuntimeWarning, match="loader skipped"):
        batches = list(train)
    assert len(batches) == 8
    assert not any(corrupt in batch["key"] for batch in batches), "a corrupt sample is never returned"
    stats = train.stats()
    assert stats["bad_samples"] >= 1 and stats["bad_shards"] >= 1
    workers = loader(manifest, batch_size=4, num_workers=2, epoch_batches=8)
    assert len(list(workers)) == 8 and workers.stats()["bad_shards"] + workers.stats()["bad_samples"] >= 1


def test_a_loader_of_only_corrupt_samples_raises_naming_a_shard(tar_manifest, tmp_path):
    shards = copy_shards(tar_manifest, tmp_path)
    for shard in shards:
        flip_bytes(shard["path"], members=None)
    manifest = write_manifest(tmp_path / "manifest.jsonl", read_manifest(tar_manifest).config, shards)
    train = loader(manifest, batch_size=4, epoch_batches=2)
    with pytest.warns(RuntimeWarning), \
            pytest.raises(RuntimeError, match=r"in a row failed to decode; the last: .*\.tar: .*checksum"):
        list(train)


def test_worker_batches_are_never_overwritten_while_held(tar_manifest):
    """Workers reuse the shared memory of batches the consumer has dropped (pipeline.batch_ring.BatchRing):
    a batch kept over later batches and epochs keeps its values, and dropped batches free their slots."""
    train = loader(tar_manifest, num_workers=2, epoch_batches=6)
    held = None
    for _ in range(3):  # epochs: prefetched batches the DataLoader drops unseen are freed too
        for batch in train:
            if held is None:
                held, copy = batch, {name: batch[name].clone() for name in ("input", "target", "masked")}
    assert all(torch.equal(held[name], value) for name, value in copy.items())
    del batch, held
    gc.collect()
    assert (train.ring.board <= 0).all(), "every received batch released its slot"


def _ddp_rank(rank: int, port: int, manifest: str, out: str):
    mp.set_start_method("fork", force=True)  # as under torchrun (mp.spawn children would spawn workers: slow)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        batches = loader(manifest, batch_size=2, num_workers=2, seed=0, epoch_batches=6)
        keys = [batch["key"] for batch in batches]
        Path(out, f"{rank}.json").write_text(json.dumps(keys))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_and_workers_see_disjoint_shards(tar_manifest, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tar_manifest), str(tmp_path)), nprocs=2, join=True)
    shard_of = {}
    for shard in read_manifest(tar_manifest).shards("train"):
        for raw in iter_tar_shard(shard["path"]):
            shard_of[decode_sample(raw)["key"]] = shard["path"]
    seen = []
    for rank in range(2):
        keys = json.loads((tmp_path / f"{rank}.json").read_text())
        assert len(keys) == 6  # the same number of batches on every rank
        by_worker = [{shard_of[k] for batch in keys[w::2] for k in batch} for w in range(2)]  # round robin
        assert not by_worker[0] & by_worker[1]
        seen.append(by_worker[0] | by_worker[1])
    assert not seen[0] & seen[1]
