"""Fine-tuning for vocal removal: its own schedule, loss weights and on-the-fly stems augmentation.

The trainer's other settings (batch size, clipping, logging, checkpoints, workers) are the ``train``
section's and the crop is ``loader.crop_frames``; ``finetune_config`` in ``train/finetune.py`` puts the
schedule below over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class FinetuneConfig:
    steps: int = 20_000  # optimizer steps of a fine-tune (--steps overrides)
    lr: float = 1e-4
    warmup_steps: int = 500
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    freeze_encoder_steps: int = 0  # the encoder levels get no updates for the first N steps
    # Modules --init leaves freshly initialised: none by default, since pretraining's default head
    # (train.reconstruct: unmix) is the vocal remover's mask; a pretraining with another head (residual,
    # head) may want [mask_head].
    fresh: tuple[str, ...] = ()
    # The starting weights of --init: init_blend x the loaded ones + (1 - init_blend) x fresh ones, drawn
    # apart from the pretraining's own start (FinetuneTask.build_models): "shrink and perturb" (Ash & Adams
    # 2020: a warm start can train slower than a fresh one); 1 (the default) loads them as they are.
    # Measured in benchmarks/README.md ("The blend's fresh half drawn apart from pretraining's start").
    init_blend: float = 1.0
    vocal_weight: float = 0.0  # L1 of (1 - mask) * |mixture| vs |vocals|, beside the instrumental's
    # The loss compares magnitudes ** loss_power: 1 is linear (the loud bins dominate, as in SDR); below 1
    # the quiet bins count too.
    loss_power: float = 1.0
    # How the masked mixture is compared with the target: "l1" mean absolute error (its optimum is the
    # median, so a few frames of loud error weigh little); "rmse" root mean squared error (Open-Unmix's MSE,
    # rooted so that its gradients keep L1's scale for Adam: normalised magnitudes are ~1e-3 and their
    # squares would sink below Adam's eps). The metrics are named after it: l1_instrumental, rmse_vocals.
    distance: Literal["l1", "rmse"] = "l1"
    # What the loss compares the masked mixture with: "magnitude" |A|, |V|; "phase" the stems projected on
    # the mixture's phase, Re(A conj(M)) / |M| (the phase-sensitive target: the error of the separated
    # spectrum m * M, which keeps the mixture's phase, is smallest where m * |M| meets it).
    target: Literal["magnitude", "phase"] = "magnitude"
    remix_prob: float = 0.5  # vocals taken from another track of the stream
    no_vocals_prob: float = 0.1  # the mixture is the accompaniment alone
    gain_db: float = 3.0  # each stem's gain is uniform in +-gain_db
    vocal_pool: int = 8  # recent vocals crops a foreign one is drawn from
    val_split: str = "validation"  # the stems manifest's split that validation separates

    def __post_init__(self):
        if self.steps <= 0 or self.lr <= 0 or self.warmup_steps < 0 or self.freeze_encoder_steps < 0:
            raise ValueError("steps and lr must be positive, warmup_steps and freeze_encoder_steps >= 0")
        if not 0.0 < self.init_blend <= 1.0:
            raise ValueError(f"init_blend must be in (0, 1], got {self.init_blend}")
        for name in ("remix_prob", "no_vocals_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.loss_power <= 1.0:
            raise ValueError(f"loss_power must be in (0, 1], got {self.loss_power}")
        if self.vocal_weight < 0 or self.gain_db < 0 or self.vocal_pool < 1:
            raise ValueError("vocal_weight and gain_db must be >= 0, vocal_pool >= 1")
