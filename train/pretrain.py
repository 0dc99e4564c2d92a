"""The pretraining task: reconstruct masked spans of spectrogram (and, optionally, next segment).

Batches (``ManifestData``: ``pipeline.loader.build_pretrain_loader``; or ``SyntheticData``):
``input`` and ``target`` ``[B, C, F, T]`` float16 in [0, 1], ``masked`` ``[B, T]`` bool (whole tokens),
``is_next`` ``[B]``.  The model predicts ``input * mask``.

Losses: ``l1_weight * (masked_weight * L1_masked + unmasked_weight * L1_unmasked)``
``+ next_weight * BCE(next_logit, is_next)`` ``+ adv_weight * BCE(D(reconstructed tokens), 1)``;
the discriminator (``adv_weight > 0``) learns true vs reconstructed masked tokens cut into a batch
of their own.

The mask head starts at ``train.initial_mask``, not 0.5: on a white token (80% of the selected ones)
the input is 1.0, so the prediction there is the mask itself, and the targets are normalised
magnitudes, mostly tiny (on the example library the masked frames' median is about 1e-3, their
mean 5e-3).  From a mask of 0.5, Adam moves the logits by about ``lr`` per step, and the masked L1
stayed near 0.43 for hundreds of steps; from logit(1e-3) it starts near the best constant (the
median, for L1).  Down there sigmoid(z) is about exp(z): the head predicts log-magnitudes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from specbert.configs import Config
from specbert.model import build_discriminator, build_model
from specbert.pipeline.schema import TRAIN, VALIDATION
from specbert.train.distributed import unwrap
from specbert.train.losses import (
    cut_tokens,
    discriminator_loss,
    frozen_call,
    generator_adv_loss,
    next_segment_bce,
    region_l1,
)
from specbert.train.rng import derive_seed

Batch = dict[str, Tensor]


class PretrainData(Protocol):
    """Where a rank's pretraining batches come from."""

    def train(self, epoch: int) -> Iterable[Batch]:
        """One epoch of training batches, a deterministic function of ``epoch``."""

    def val(self) -> Iterable[Batch]:
        """Validation batches, the same on every call."""

    def stats(self) -> dict[str, float]:
        """Counters worth logging (e.g. skipped shards)."""


class ManifestData:
    """Batches of the shards in an ingest manifest (``pipeline.loader``); skip counts summed over epochs.

    ``train.next_weight == 0`` also switches off the loader's next-segment pairs. Batches arrive on
    ``device`` (the trainer's); on a GPU the loader builds their masked input there."""

    def __init__(self, cfg: Config, manifest: str | Path, device: torch.device | str | None = None):
        self.cfg, self.manifest, self.device = cfg, manifest, device
        self._done: Counter = Counter()
        self._current = None

    def _loader(self, split: str, seed: int):
        from specbert.pipeline.loader import build_pretrain_loader

        tc = self.cfg.train
        pairs = self.cfg.loader.next_segment and tc.next_weight > 0
        return build_pretrain_loader(self.manifest, split=split, batch_size=tc.batch_size,
                                     num_workers=tc.num_workers, seed=seed, config=self.cfg,
                                     device=self.device, next_segment=pairs)

    def train(self, epoch: int):
        self._done.update(self.stats())
        self._current = self._loader(TRAIN, derive_seed(self.cfg.train.seed, 0, epoch))
        return self._current

    def val(self):
        return self._loader(VALIDATION, derive_seed(self.cfg.train.seed, 1))

    def stats(self) -> dict[str, float]:
        current = self._current.stats() if self._current is not None else {}
        return dict(self._done + Counter(current))


class SyntheticData:
    """``count`` random in-memory batches of the loader's form, for tests and benchmarks: every epoch
    and every validation pass gives the same batches.  Targets are noise with a spectral tilt; about
    ``mask_rate`` of the tokens are masked (white)."""

    def __init__(self, cfg: Config, count: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        b, c, f = cfg.train.batch_size, cfg.audio.channels, cfg.audio.model_bins
        t, k = cfg.loader.crop_frames, cfg.loader.token_frames
        tilt = torch.linspace(1.0, 0.05, f)[:, None]
        self.batches = []
        for _ in range(count):
            target = (torch.rand(b, c, f, t, generator=g) * tilt).to(torch.float16)
            tokens = torch.rand(b, t // k, generator=g) < cfg.loader.mask_rate
            tokens[:, 0] |= ~tokens.any(dim=1)  # at least one token masked
            masked = tokens.repeat_interleave(k, dim=1)
            x = torch.where(masked[:, None, None, :], torch.ones((), dtype=torch.float16), target)
            self.batches.append({"input": x, "target": target, "masked": masked,
                                 "is_next": torch.rand(b, generator=g) < 0.5})

    def train(self, epoch: int):
        return self.batches

    def val(self):
        return self.batches

    def stats(self) -> dict[str, float]:
        return {}


class PretrainTask:
    """``train.trainer.Task`` for masked-spectrogram pretraining on the batches of ``data``."""

    def __init__(self, cfg: Config, data: PretrainData):
        self.cfg, self.tc, self.data = cfg, cfg.train, data

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        return self.data.train(epoch)

    def val_batches(self) -> Iterable[Batch]:
        return self.data.val()

    def stats(self) -> dict[str, float]:
        return self.data.stats()

    def build_models(self) -> dict[str, nn.Module]:
        model = build_model(self.cfg)
        model.mask_head.start_at(self.tc.initial_mask)
        if self.tc.next_weight == 0:
            model.next_head.requires_grad_(False)  # no loss reaches it
        models = {"model": model}
        if self.tc.adv_weight > 0:
            models["disc"] = build_discriminator(self.cfg)
        return models

    def optimizer_settings(self, name: str) -> dict:
        if name == "disc":
            return {"lr": self.tc.disc_lr, "betas": self.tc.disc_betas, "weight_decay": 0.0}
        return {"lr": self.tc.lr, "betas": self.tc.betas, "weight_decay": self.tc.weight_decay}

    def count(self, batch: Batch) -> tuple[int, int]:
        b, _, _, t = batch["input"].shape
        return b, b * t

    def losses(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, Tensor]:
        tc = self.tc
        x, target, masked = batch["input"].float(), batch["target"], batch["masked"]
        mask, next_logit = models["model"](x)
        pred = x * mask
        l1_masked, l1_unmasked = region_l1(pred, target, masked)
        out = {"l1_masked": l1_masked, "l1_unmasked": l1_unmasked}
        loss = tc.l1_weight * (tc.masked_weight * l1_masked + tc.unmasked_weight * l1_unmasked)
        if tc.next_weight > 0:
            out["next_bce"] = next_segment_bce(next_logit, batch["is_next"])
            out["next_acc"] = next_accuracy(next_logit, batch["is_next"])
            loss = loss + tc.next_weight * out["next_bce"]
        if "disc" in models:
            k = self.cfg.loader.token_frames
            fake, real = cut_tokens(pred, masked, k), cut_tokens(target.float(), masked, k)
            out["adv"] = generator_adv_loss(frozen_call(unwrap(models["disc"]), fake))
            out["disc"] = discriminator_loss(*models["disc"](torch.cat([real, fake.detach()])).chunk(2))
            loss = loss + tc.adv_weight * out["adv"] + out["disc"]  # disjoint graphs: see frozen_call
        out["loss"] = loss
        return out

    def validate(self, models: dict[str, nn.Module], batches: Iterable[Batch]) -> dict[str, float]:
        """Masked L1 and next-segment accuracy of the model and of trivial baselines: the mean of the
        unmasked neighbour frames (``baseline_``), silence (``silence_``: predicting 0 everywhere,
        i.e. the masked targets' mean), and always answering the commoner next-segment label."""
        totals = np.zeros(5)
        batches_seen = 0
        for batch in batches:
            x, target, masked, is_next = (batch["input"].float(), batch["target"], batch["masked"],
                                          batch["is_next"])
            mask, next_logit = models["model"](x)
            totals += [region_l1(x * mask, target, masked)[0].item(),
                       region_l1(neighbour_mean(x, masked), target, masked)[0].item(),
                       region_l1(torch.zeros_like(x), target, masked)[0].item(),
                       next_accuracy(next_logit, is_next).item(),
                       is_next.float().mean().item()]
            batches_seen += 1
        l1, base_l1, silence_l1, acc, positives = totals / max(batches_seen, 1)
        metrics = {"l1_masked": l1, "baseline_l1_masked": base_l1, "silence_l1_masked": silence_l1}
        if self.tc.next_weight > 0:
            metrics.update(next_acc=acc, baseline_next_acc=max(positives, 1 - positives))
        return metrics

    def preview(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, np.ndarray]:
        """Left channel of the first item: target, masked input, prediction (dB scale) and the mask."""
        x = batch["input"][:1].float()
        mask, _ = models["model"](x)
        return {"target": db_image(batch["target"][0, 0]), "masked input": db_image(x[0, 0]),
                "prediction": db_image((x * mask)[0, 0]), "mask": mask[0, 0].float().cpu().numpy()}


def next_accuracy(logit: Tensor, is_next: Tensor) -> Tensor:
    return ((logit > 0) == is_next.bool()).float().mean()


def neighbour_mean(x: Tensor, masked: Tensor) -> Tensor:
    """The trivial reconstruction: each masked frame becomes the mean of the nearest unmasked frame on
    its left and on its right (whichever exist; 0 if none).  ``x [B, C, F, T]``, ``masked [B, T]``."""
    b, c, f, t = x.shape
    idx = torch.arange(t, device=x.device).expand(b, t)
    left = torch.where(masked, -1, idx).cummax(dim=1).values
    right = torch.where(masked, t, idx).flip(1).cummin(dim=1).values.flip(1)
    has_left, has_right = (left >= 0).to(x.dtype), (right < t).to(x.dtype)

    def frames(index: Tensor) -> Tensor:
        return x.gather(3, index.clamp(0, t - 1)[:, None, None, :].expand(b, c, f, t))

    total = frames(left) * has_left[:, None, None] + frames(right) * has_right[:, None, None]
    guess = total / (has_left + has_right).clamp_min(1)[:, None, None]
    return torch.where(masked[:, None, None, :], guess, x)


def db_image(spec: Tensor, floor_db: float = -80.0) -> np.ndarray:
    """Magnitudes in [0, 1] -> dB mapped to [0, 1] (``floor_db`` and below -> 0)."""
    db = 20 * torch.log10(spec.float().clamp_min(10 ** (floor_db / 20)))
    return (1 - db / floor_db).cpu().numpy()
