"""The fine-tuning loader: stems shards (``specbert ingest-stems``) -> remixed, normalised crops.

    loader = build_stems_loader("stems/manifest.jsonl", cfg, split="train", batch_size=8, num_workers=2)
    for batch in loader: ...               # loader.stats() as the pretraining loader's

It is ``pipeline.loader.build_loader`` (shard source, shuffling, decoding, workers, batching, skip
counts) with the stages of ``StemsTask``. A training batch holds

    mixture        float16 [B, C, bins, T]  |A + V| / peak clipped to [0, 1]  (bins = 1024, T = crop)
    accompaniment  float16 [B, C, bins, T]  |A| / peak, likewise (or A along the mixture's phase: ``targets``)
    vocals         float16 [B, C, bins, T]  |V| / peak (likewise)
    track          list[str]                the accompaniment's track
    vocals_track   list[str]                the vocals' track ("" when there are none)

where A and V are complex STFT crops, augmented on the fly (``remix``): the vocals come from another
track of the stream with probability ``finetune.remix_prob``, or are left out with probability
``finetune.no_vocals_prob``; each stem gets a random gain of +-``finetune.gain_db`` and its channels
swapped with probability ``loader.channel_swap``; the mixture is the sum of the complex stems, so it
is exact. ``peak`` is the track's peak magnitude (``max_magnitude``, the normalisation of pretraining and
of separation) times the accompaniment's gain, or the crop's own mixture peak when the remix is louder.

``build_segments_loader`` gives whole stored segments instead, one per batch, for validation:
``mixture``, ``accompaniment``, ``vocals`` complex64 ``[1, C, all bins, frames]``, ``peak`` ``[1]`` and
``track``; a stem that was not stored is derived (accompaniment = mixture - vocals and vice versa).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from specbert.configs import Config, ConfigError
from specbert.configs.finetune import FinetuneConfig
from specbert.pipeline.loader import EmptySplit, Loader, build_loader, note_short_tracks
from specbert.pipeline.manifest import Manifest, read_manifest
from specbert.pipeline.schema import STEMS, TRAIN
from specbert.pipeline.shards import to_complex
from specbert.pipeline.spectral import max_magnitude, model_view, normalise
from specbert.pipeline.stages import (
    BatchStream,
    Seeds,
    Skips,
    count_short,
    crop_start,
    each,
    interleaved,
)


def stems_pair(stems: dict[str, np.ndarray], start: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Complex64 accompaniment and vocals ``[C, bins, frames]`` from frame ``start`` of decoded stems
    (float16 ``{name: [2, C, bins, T]}``), deriving a stem that was not stored; silence (0) after the
    segment's end when it is shorter."""

    def cut(name: str) -> np.ndarray:
        x = to_complex(stems[name][..., start : start + frames])
        return np.pad(x, ((0, 0), (0, 0), (0, frames - x.shape[-1]))) if x.shape[-1] < frames else x

    if "accompaniment" in stems and "vocals" in stems:
        return cut("accompaniment"), cut("vocals")
    mixture = cut("mixture")
    if "accompaniment" in stems:
        accompaniment = cut("accompaniment")
        return accompaniment, mixture - accompaniment
    vocals = cut("vocals")
    return mixture - vocals, vocals


def crop_stems(sample: dict, frames: int, swap: float, rng: np.random.Generator) -> dict:
    """A random window of a stems segment: complex ``accompaniment`` and ``vocals`` ``[C, model_bins,
    frames]``, each with its channels swapped with probability ``swap``."""
    record = sample["record"]
    start = crop_start(record["frames"], frames, rng)
    pair = stems_pair({name: model_view(x) for name, x in sample["stems"].items()}, start, frames)
    accompaniment, vocals = (x[::-1] if rng.random() < swap else x for x in pair)
    return {"key": sample["key"], "track": str(record["track_id"]), "peak": float(record["max_magnitude"]),
            "accompaniment": accompaniment, "vocals": vocals}


def remix(samples: Iterable[dict], cfg: FinetuneConfig, rng: np.random.Generator) -> Iterator[dict]:
    """Stream stage: complex crops -> the training sample of the module's docstring.

    ``pool`` keeps the vocals of the last ``cfg.vocal_pool`` crops (the stream is shuffled, so they are a
    random draw); foreign vocals come from an entry of another track; while there is none (the first crops,
    a one-track set) a crop keeps its own.
    """
    pool: deque[dict] = deque(maxlen=cfg.vocal_pool)
    for sample in samples:
        track, vocals, vocals_track = sample["track"], sample["vocals"], sample["track"]
        others = [entry for entry in pool if entry["track"] != track]
        pool.append({"track": track, "vocals": vocals})
        draw = rng.random()
        if draw < cfg.no_vocals_prob:
            vocals, vocals_track = np.zeros_like(vocals), ""
        elif draw < cfg.no_vocals_prob + cfg.remix_prob and others:
            entry = others[rng.integers(len(others))]
            vocals, vocals_track = entry["vocals"], entry["track"]
        gain_a, gain_v = 10.0 ** (rng.uniform(-cfg.gain_db, cfg.gain_db, size=2) / 20.0)
        accompaniment, vocals = sample["accompaniment"] * np.float32(gain_a), vocals * np.float32(gain_v)
        mixture = accompaniment + vocals
        magnitude = np.abs(mixture)
        magnitudes = {"mixture": magnitude, **targets(accompaniment, vocals, mixture, magnitude, cfg.target)}
        peak = max(max_magnitude(magnitudes["mixture"]), gain_a * sample["peak"])
        yield {"key": sample["key"], "track": track, "vocals_track": vocals_track,
               **{name: normalise(torch.from_numpy(x), peak) for name, x in magnitudes.items()}}


def targets(accompaniment: np.ndarray, vocals: np.ndarray, mixture: np.ndarray, magnitude: np.ndarray,
            target: str) -> dict:
    """The training targets of complex stems (``mixture`` their sum, ``magnitude`` its absolute value): their
    magnitudes (``finetune.target`` "magnitude"), or their parts along the mixture's phase,
    ``Re(S conj(M)) / |M|`` ("phase"; negative where a stem opposes the mixture, so ``normalise`` clips it to
    0, which a mask in [0, 1] cannot go below anyway)."""
    if target == "magnitude":
        return {"accompaniment": np.abs(accompaniment), "vocals": np.abs(vocals)}
    direction = np.conj(mixture) / np.maximum(magnitude, np.float32(1e-12))  # e^(-i phase), 0 at 0
    return {"accompaniment": (accompaniment * direction).real, "vocals": (vocals * direction).real}


def whole_segment(sample: dict) -> dict:
    """A stored segment as complex64 ``mixture``, ``accompaniment`` and ``vocals`` ``[C, bins, frames]``."""
    record, stems = sample["record"], sample["stems"]
    accompaniment, vocals = stems_pair(stems, 0, record["frames"])
    mixture = to_complex(stems["mixture"])  # always stored (configs.ingest)
    return {"key": sample["key"], "track": str(record["track_id"]), "peak": float(record["max_magnitude"]),
            **{name: torch.from_numpy(x) for name, x in
               (("mixture", mixture), ("accompaniment", accompaniment), ("vocals", vocals))}}


@dataclass(frozen=True)
class StemsTask:
    """The fine-tuning stages between decoding and batching: crop -> remix (training), or whole segments."""

    cfg: Config
    train: bool

    def __call__(self, seeds: Seeds, skips: Skips) -> list:
        loader = self.cfg.loader
        if not self.train:
            return [each(whole_segment)]
        crop = partial(crop_stems, frames=loader.crop_frames, swap=loader.channel_swap,
                       rng=seeds.numpy("crop"))
        return [
            partial(count_short, frames=loader.crop_frames, skips=skips),
            partial(interleaved, f=crop, times=loader.crops_per_segment, pool=loader.segment_pool,
                    rng=seeds.numpy("interleave")),
            partial(remix, cfg=self.cfg.finetune, rng=seeds.numpy("remix")),
        ]


def stems_shards(manifest: str | Path, split: str) -> tuple[list[dict], int, Manifest]:
    """The stems shards of ``split`` in ``manifest``, its segment length in frames and the manifest;
    ConfigError naming the manifest when there are none or the stems cannot give a vocal/instrumental
    pair."""
    contents = read_manifest(manifest)
    ingest = contents.config.get("ingest", {})
    stored = set(ingest.get("stems", ()))
    if contents.config.get("kind") != STEMS or not stored & {"accompaniment", "vocals"}:
        raise ConfigError(f"{manifest}: not a stems manifest with vocals or accompaniment "
                          "(write one with `specbert ingest-stems`)")
    shards = [s for s in contents.shards(split) if s["kind"] == STEMS]
    if not shards:
        splits = sorted({s["split"] for s in contents.shards() if s["kind"] == STEMS})
        raise EmptySplit(f"{manifest}: no stems shards in split {split!r} (splits: "
                         f"{', '.join(splits) or 'none'}; set finetune.val_split, or ingest with a larger "
                         "ingest.val_fraction)")
    return shards, ingest.get("segment_frames", 0), contents


def build_stems_loader(manifest: str | Path, cfg: Config, split: str = TRAIN, batch_size: int = 8,
                       num_workers: int = 2, seed: int = 0) -> Loader:
    """Training batches (resampled shards, ``loader.epoch_batches`` per epoch) of augmented crops."""
    shards, segment, contents = stems_shards(manifest, split)
    if segment < cfg.loader.crop_frames:
        raise ConfigError(f"{manifest}: segments of {segment} frames are shorter than loader.crop_frames "
                          f"({cfg.loader.crop_frames})")
    note_short_tracks(contents, split, cfg.loader.crop_frames, f"{manifest} ({split})")
    return build_loader(shards, StemsTask(cfg, train=True), batch_size=batch_size,
                        num_workers=num_workers, seed=seed, resampled=True,
                        shuffle_buffer=cfg.loader.shuffle_buffer, epoch_batches=cfg.loader.epoch_batches,
                        what=f"{manifest} ({split})")


def build_segments_loader(manifest: str | Path, cfg: Config, split: str, num_workers: int = 1,
                          seed: int = 0) -> Loader:
    """Every whole segment of ``split`` once, one per batch, in an order fixed by ``seed``.  Not split over
    DDP ranks: validation sets are small (often one shard), and every rank then scores the same tracks."""
    shards, _, _ = stems_shards(manifest, split)
    stream = BatchStream(shards, StemsTask(cfg, train=False), batch_size=1, seed=seed, rank=0,
                         world_size=1, resampled=False, shuffle_buffer=1)
    return Loader(stream, min(num_workers, len(shards)), epoch_batches=None)
