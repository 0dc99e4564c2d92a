"""The pretraining task: reconstruct masked spans of spectrogram (and, optionally, next segment).

Batches (``ManifestData``: ``pipeline.loader.build_pretrain_loader``; or ``SyntheticData``):
``input`` and ``target`` ``[B, C, F, T]`` float16 in [0, 1], ``masked`` ``[B, T]`` bool (whole tokens),
``kinds`` ``[B, tokens]`` (``pipeline.masking``), ``is_next`` ``[B]``.

The prediction of the masked frames (``train.reconstruct``):

- ``mask`` (the reference design): ``input * mask``.  On a white token (input 1.0) that is the mask
  itself, a sigmoid squeezed near 0 (targets are mostly 1e-4..1e-2), so the head starts at
  ``train.initial_mask``, and no white token shows the model a value to scale;
- ``head``: the head's output is the prediction itself, a magnitude ``** loss_power`` in [0, 1];
- ``residual``: a guess in each gap (``train.gap_guess``: the linear interpolation across it, the rule
  that needs no learning, or the best-matching stretch of the crop copied into it,
  ``train.context.repetition``), corrected in dB by the head's logit (``train.residual_db`` dB per unit;
  the head starts at 0, so the first prediction is the guess).  White tokens show the network that guess
  in place of ``loader.mask_value``.  The loss is L1 in dB (``context.db_scale``), the fixed measure
  itself.  With the interpolation every bit of ``context_gain`` above 0 is learned from context; with
  the copied stretch ``context_gain`` starts at the copy's, and ``gain_over_repetition`` is what the
  network adds;
- ``unmix`` (the default): the vocal remover's own form, ``input * mask``, where white tokens show the
  guess in each gap as with ``residual``: the mask keeps the crop and takes out what mixing added (below),
  in the gaps as elsewhere, so the whole model, mask head included, is a vocal remover's warm start.

Mixing (``train.mix_prob``): the frames a crop's input shows carry an intruder too (added in power:
``sqrt(x^2 + intruder^2)``, the expected magnitude of two sources of unrelated phase), while the target
stays the crop alone; with ``train.unmasked_weight`` the network learns to take it out.  The intruder
(``train.mix_source``) is a synthetic voice (``pipeline.voices.magnitude_bank``, rendered once per run) at a
ratio to the crop drawn from ``voices.VOCAL_DB`` over the frames where the voice sounds, or another crop of
the batch 3-12 dB quieter (``train.mix_db``; WavLM's utterance mixing).  A library without vocals shows the
network no voice otherwise: the voice is what makes pretraining teach vocal removal (benchmarks/README.md).

Losses: ``l1_weight * (masked_weight * L1_masked + unmasked_weight * L1_unmasked)`` in the
reconstruction's domain (``residual``: dB; otherwise magnitudes ``** train.loss_power``, 1: linear, where
L1 is dominated by a few loud bins and its optimum, the median, is near 0)
``+ db_weight * (masked_weight * dB_masked + unmasked_weight * dB_unmasked)`` (the same regions' L1 in
``context.db_scale``, where every bin above the floor counts alike: the mask then keeps the quiet bins that
the linear L1 does not see)
``+ next_weight * BCE(next_logit, is_next)`` ``+ adv_weight * BCE(D(reconstructed tokens), 1)``; the
discriminator (``adv_weight > 0``) learns true vs reconstructed masked tokens cut into
a batch of their own.

Validation scores the model against rules that need no learning (``train.context``) on the masked frames
whose input hides them (white and noise tokens): ``db_error`` (the fixed measure) and ``l1_masked`` (the
training loss) of the model and of each rule, and ``context_gain``; and against the copy of the
best-matching stretch (``db_error_repetition``, ``gain_over_repetition``).
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
from specbert.pipeline.masking import NOISE, WHITE, seam_frames
from specbert.pipeline.schema import TRAIN, VALIDATION
from specbert.pipeline.voices import PAN, VOCAL_DB, magnitude_bank, pan_gains, voice_gain
from specbert.train.context import (
    DB_FLOOR,
    TRIVIAL,
    context_gain,
    db_error,
    db_image,
    db_scale,
    from_db_scale,
    interpolation,
    repetition,
)
from specbert.train.distributed import unwrap
from specbert.train.losses import (
    compressed,
    cut_tokens,
    discriminator_loss,
    frozen_call,
    generator_adv_loss,
    next_segment_bce,
    region_l1,
)
from specbert.train.rng import derive_seed
from specbert.train.trainer import NoValidationData

Batch = dict[str, Tensor]


class PretrainData(Protocol):
    """Where a rank's pretraining batches come from."""

    def train(self, epoch: int) -> Iterable[Batch]:
        """One epoch of training batches, a deterministic function of ``epoch``."""

    def val(self) -> Iterable[Batch]:
        """Validation batches, the same on every call; ``train.trainer.NoValidationData`` when none."""

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
        from specbert.pipeline.loader import EmptySplit

        try:
            return self._loader(VALIDATION, derive_seed(self.cfg.train.seed, 1))
        except EmptySplit as err:
            raise NoValidationData(str(err)) from None

    def stats(self) -> dict[str, float]:
        current = self._current.stats() if self._current is not None else {}
        return dict(self._done + Counter(current))


class SyntheticData:
    """``count`` random in-memory batches of the loader's form, for tests and benchmarks: every epoch
    and every validation pass gives the same batches.  Targets are noise with a spectral tilt; about
    ``mask_rate`` of the tokens are masked (white: ``loader.mask_value``).  Next-segment pairs are not
    built (no separator)."""

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
            white = torch.tensor(cfg.loader.mask_value, dtype=torch.float16)
            x = torch.where(masked[:, None, None, :], white, target)
            self.batches.append({"input": x, "target": target, "masked": masked,
                                 "kinds": tokens.to(torch.int8) * WHITE,
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
        self.pairs = cfg.loader.next_segment and self.tc.next_weight > 0  # as ManifestData's loader
        self._voices: Tensor | None = None  # the voice bank, rendered on first use

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        return self.data.train(epoch)

    def val_batches(self) -> Iterable[Batch]:
        return self.data.val()

    def stats(self) -> dict[str, float]:
        return self.data.stats()

    def build_models(self) -> dict[str, nn.Module]:
        model = build_model(self.cfg)
        if self.tc.reconstruct == "residual":
            model.mask_head.zero_()  # no correction: the first prediction is the interpolation's
        elif self.tc.reconstruct == "unmix":
            if self.tc.unmix_start is not None:  # None: the head as built, as a fine-tune's from scratch
                model.mask_head.start_at(self.tc.unmix_start)
        else:
            model.mask_head.start_at(self.tc.initial_mask ** self.tc.loss_power
                                     if self.tc.reconstruct == "head" else self.tc.initial_mask)
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

    def domain(self, spec: Tensor) -> Tensor:
        """Magnitudes -> the loss's domain: dB on a unit scale (``residual``) or ``** train.loss_power``
        (float32)."""
        if self.tc.reconstruct == "residual":
            return db_scale(spec)
        return compressed(spec, self.tc.loss_power)

    def network_input(self, batch: Batch, mix: bool = True) -> tuple[Tensor, Tensor | None]:
        """What the network sees (float32) and, with ``residual`` and ``unmix``, the guess in each gap
        (``train.gap_guess``; None otherwise).  Then every white token shows that guess instead of
        ``loader.mask_value``, so the features of a gap start from what the head corrects or scales (white
        bins teach the network nothing about the gap and swamp the first BatchNorm's statistics:
        ``benchmarks/README.md``).  With ``mix`` and ``train.mix_prob``, the frames the input shows (all
        but white tokens and the separator) have ``intruder`` added in power first."""
        x = batch["input"].float()
        white = (batch["kinds"] == WHITE).repeat_interleave(self.cfg.loader.token_frames, dim=1).to(x.device)
        if mix and self.tc.mix_prob > 0:
            shown = ~white
            if self.pairs:
                shown[:, seam_frames(shown.shape[1], self.cfg.loader.token_frames)] = False  # the separator
            x = torch.sqrt(x.square() + (self.intruder(batch) * shown[:, None, None, :]).square())
        if self.tc.reconstruct not in ("residual", "unmix"):
            return x, None
        rule = repetition if self.tc.gap_guess == "repetition" else interpolation
        guess = rule(x, self.known_frames(batch["masked"]))  # known frames are the input's own
        return torch.where(white[:, None, None, :], guess, x), guess

    def intruder(self, batch: Batch) -> Tensor:
        """``[B, C, F, T]`` float32: what mixing adds to each crop, with probability ``train.mix_prob``:
        ``voice`` a stretch of a voice of the bank at a random offset, panned by up to ``voices.PAN``, at a
        ratio uniform in ``voices.VOCAL_DB`` to the crop's power over the frames where the voice sounds;
        ``batch`` the batch's previous crop (as a rule another track's: the loader shuffles) at a gain uniform
        in ``train.mix_db`` dB.  Drawn from the global generator, which checkpoints carry and validation
        seeds."""
        target = batch["target"].float()
        b, c, _, t = target.shape
        present = torch.rand(b) < self.tc.mix_prob
        if self.tc.mix_source == "batch":
            low, high = self.tc.mix_db
            gain = 10 ** ((low + (high - low) * torch.rand(b)) / 20)
            return torch.where(present, gain, 0.0).to(target.device)[:, None, None, None] * target.roll(1, 0)
        bank = self.voices(target.device)  # [V, F, L]
        pick = torch.randint(len(bank), (b,))
        start = torch.randint(bank.shape[-1] - t + 1, (b,))
        mono = torch.stack([bank[i, :, s:s + t].float()
                            for i, s in zip(pick.tolist(), start.tolist(), strict=True)])
        pan = PAN * (2 * torch.rand(b) - 1)
        ratio_db = VOCAL_DB[0] + (VOCAL_DB[1] - VOCAL_DB[0]) * torch.rand(b)
        # each frame's power over the bins [B, T]: the voice's before panning, the crop's mean of the channels
        device = target.device
        gain = voice_gain(mono.square().sum(1), target.square().sum(2).mean(1), ratio_db.to(device))
        gain = torch.where(present.to(device), gain, 0.0)[:, None] * pan_gains(pan, c).to(device)  # [B, C]
        return gain[:, :, None, None] * mono[:, None]  # [B, C, F, T]

    def voices(self, device: torch.device) -> Tensor:
        """The voice bank ``[train.voice_bank, F, 4 x loader.crop_frames]`` (float16, on ``device``), drawn
        from the run's seed: the same on every rank and after a resume."""
        if self._voices is None:
            bank = magnitude_bank(derive_seed(self.tc.seed, 4), self.tc.voice_bank,
                                  4 * self.cfg.loader.crop_frames, self.cfg.audio)
            self._voices = torch.from_numpy(bank)
        self._voices = self._voices.to(device)  # moved once
        return self._voices

    def predict(self, model: nn.Module, x: Tensor, guess: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The model's reconstruction of the target in the loss's domain and as magnitudes, and its
        next-segment logit (see the module docstring), from ``network_input``'s ``(x, guess)``."""
        if self.tc.reconstruct == "residual":
            logit, next_logit = model(x, logits=True)
            level = db_scale(guess) + logit * (self.tc.residual_db / -DB_FLOOR)
            return level, from_db_scale(level), next_logit
        mask, next_logit = model(x)
        if self.tc.reconstruct in ("mask", "unmix"):
            linear = x * mask
            return self.domain(linear), linear, next_logit
        return mask, mask ** (1 / self.tc.loss_power), next_logit

    def losses(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, Tensor]:
        tc = self.tc
        target, masked = batch["target"], batch["masked"]
        pred, linear, next_logit = self.predict(models["model"], *self.network_input(batch))
        l1_masked, l1_unmasked = region_l1(pred, self.domain(target), masked)
        out = {"l1_masked": l1_masked, "l1_unmasked": l1_unmasked}
        loss = tc.l1_weight * (tc.masked_weight * l1_masked + tc.unmasked_weight * l1_unmasked)
        if tc.db_weight > 0:
            db_masked, db_unmasked = region_l1(db_scale(linear), db_scale(target), masked)
            out.update(db_masked=db_masked, db_unmasked=db_unmasked)
            loss = loss + tc.db_weight * (tc.masked_weight * db_masked + tc.unmasked_weight * db_unmasked)
        if tc.next_weight > 0:
            out["next_bce"] = next_segment_bce(next_logit, batch["is_next"])
            out["next_acc"] = next_accuracy(next_logit, batch["is_next"])
            loss = loss + tc.next_weight * out["next_bce"]
        if "disc" in models:
            k = self.cfg.loader.token_frames
            fake, real = cut_tokens(linear, masked, k), cut_tokens(target.float(), masked, k)
            out["adv"] = generator_adv_loss(frozen_call(unwrap(models["disc"]), fake))
            out["disc"] = discriminator_loss(*models["disc"](torch.cat([real, fake.detach()])).chunk(2))
            loss = loss + tc.adv_weight * out["adv"] + out["disc"]  # disjoint graphs: see frozen_call
        out["loss"] = loss
        return out

    def known_frames(self, masked: Tensor) -> Tensor:
        """``[B, T]``: the frames a trivial rule may use: neither masked nor the pair's separator."""
        known = ~masked
        if self.pairs:
            known = known.clone()
            known[:, seam_frames(masked.shape[1], self.cfg.loader.token_frames)] = False
        return known

    def hidden_frames(self, batch: Batch) -> Tensor:
        """``[B, T]``: the masked frames whose input hides them (white and noise tokens; a kept token shows
        the answer)."""
        kinds = batch["kinds"]
        hidden = (kinds == WHITE) | (kinds == NOISE)
        return hidden.repeat_interleave(self.cfg.loader.token_frames, dim=1).to(batch["masked"].device)

    def validate(self, models: dict[str, nn.Module], batches: Iterable[Batch]) -> dict[str, float]:
        """The model, the trivial rules (``train.context.TRIVIAL``) and the copy of the best-matching
        stretch (``repetition``) on the hidden frames: ``db_error`` and ``db_error_<rule>`` (the fixed
        measure), ``l1_masked`` and ``l1_masked_<rule>`` (the training loss's masked term),
        ``context_gain`` (over the best trivial rule) and ``gain_over_repetition``, all on inputs without
        utterance mixing; with it (``train.mix_prob``), on the known frames of the mixed inputs, the dB error
        of the model's reconstruction (``db_error_unmixed``) and of the mixture itself
        (``db_error_mixture``), and ``unmix_gain`` = 1 - their ratio; next-segment accuracy and that of
        always answering the commoner label."""
        sums: Counter = Counter()
        batches_seen = 0
        for batch in batches:
            x, target, is_next = batch["input"].float(), batch["target"], batch["is_next"]
            hidden, known = self.hidden_frames(batch), self.known_frames(batch["masked"])
            _, linear, next_logit = self.predict(models["model"], *self.network_input(batch, mix=False))
            if self.tc.mix_prob > 0:
                mixture, guess = self.network_input(batch)
                sums["db_error_mixture"] += db_error(mixture, target, known).item()
                sums["db_error_unmixed"] += db_error(self.predict(models["model"], mixture, guess)[1], target,
                                                     known).item()
            rules = {**TRIVIAL, "repetition": repetition}
            guesses = {"": linear, **{f"_{name}": rule(x, known) for name, rule in rules.items()}}
            for suffix, guess in guesses.items():
                sums[f"db_error{suffix}"] += db_error(guess, target, hidden).item()
                sums[f"l1_masked{suffix}"] += region_l1(self.domain(guess), self.domain(target),
                                                        hidden)[0].item()
            sums["next_acc"] += next_accuracy(next_logit, is_next).item()
            sums["positives"] += is_next.float().mean().item()
            batches_seen += 1
        metrics = {k: v / max(batches_seen, 1) for k, v in sums.items()}
        positives, acc = metrics.pop("positives"), metrics.pop("next_acc")
        errors = {"model": metrics["db_error"], **{name: metrics[f"db_error_{name}"] for name in TRIVIAL}}
        metrics["context_gain"] = context_gain(errors)
        metrics["gain_over_repetition"] = 1.0 - errors["model"] / max(metrics["db_error_repetition"], 1e-12)
        if self.tc.mix_prob > 0:
            mixture = max(metrics["db_error_mixture"], 1e-12)
            metrics["unmix_gain"] = 1.0 - metrics["db_error_unmixed"] / mixture
        if self.tc.next_weight > 0:
            metrics.update(next_acc=acc, baseline_next_acc=max(positives, 1 - positives))
        return metrics

    def preview(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, np.ndarray]:
        """Left channel of the first item, one colour scale (``train.context.db_image``): target, the
        network's input, the model's reconstruction of the frames the loss scores (the masked ones; all with
        ``train.unmasked_weight``; the input elsewhere) and the linear interpolation across each gap (a
        trivial rule)."""
        first = {name: value[:1] for name, value in batch.items()}
        x, guess = self.network_input(first)
        _, linear, _ = self.predict(models["model"], x, guess)
        masked = first["masked"]
        scored = masked | (self.tc.unmasked_weight > 0)
        filled = torch.where(scored[:, None, None, :], linear, x)
        return {"target": db_image(batch["target"][0, 0]), "masked input": db_image(x[0, 0]),
                "reconstruction": db_image(filled[0, 0]),
                "interpolation": db_image(interpolation(x, self.known_frames(masked))[0, 0])}


def next_accuracy(logit: Tensor, is_next: Tensor) -> Tensor:
    return ((logit > 0) == is_next.bool()).float().mean()
