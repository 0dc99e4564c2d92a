"""Optimisation, loss weights and run bookkeeping, shared by pretraining and fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UNCAPPED_STEPS = 10**9  # a step budget that a ``minutes`` budget never reaches: the time is the budget


@dataclass
class TrainConfig:
    steps: int = 100_000  # optimizer steps of the run (--steps overrides)
    # A wall-clock budget for the training loop (0: off): the run ends at the first step past it, or at
    # ``steps``, whichever comes first, and the learning-rate decay runs over the budget, not the steps.
    minutes: float = 0.0
    batch_size: int = 8  # per rank and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (ignored when effective_batch is set)
    effective_batch: int | None = None  # samples per optimizer step over all ranks; sets grad_accum
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2  # AdamW; not applied to biases and norm weights
    warmup_steps: int = 1000  # linear warm-up from 0
    schedule: Literal["cosine", "poly", "constant"] = "poly"  # decay after warm-up, to min_lr_ratio * lr
    poly_power: float = 1.0  # exponent of the polynomial decay (1: linear)
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.5  # max global gradient norm per model (0: off)
    # Decay per step of the running average of the model's weights that validation, previews, checkpoints
    # and export see (train/ema.py; 0: off, the trained weights themselves).
    ema_decay: float = 0.0
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: str = ""  # torch.compile backend of the trained models: "inductor" fuses kernels; "" off
    # Losses (pretraining; fine-tuning reads l1_weight and the adversarial settings).
    # Pretraining's objective (train/pretrain.py); the reference design's: mask, 1.0, next_weight 1.0.
    # Masked frames predicted as input x mask (white gaps), by the head, as a correction in dB to a guess
    # in each gap, or as the vocal remover's own form, the input (with the guess in each gap) x mask.
    reconstruct: Literal["mask", "head", "residual", "unmix"] = "unmix"
    # mask, head, unmix: the L1 compares magnitudes ** loss_power; 1 (linear) is the fine-tune's own loss,
    # which made unmix a better start than 0.3 did (benchmarks/README.md, session 13).
    loss_power: float = 1.0
    # mask, head, unmix: a second L1 beside it on the same regions, in dB on a unit scale (train/context.py's
    # db_scale: the fixed measure / 80), at this weight (0: off).  The linear L1 barely sees quiet bins; this
    # term weighs every bin above the floor alike, as the fixed measure (context_gain) does.
    db_weight: float = 0.0
    residual_db: float = 10.0  # residual: dB of correction per unit of the head's logit
    # residual, unmix: the guess in each gap that the network sees: the straight line across the gap, or
    # the best-matching stretch of the crop copied into it (train/context.py).
    gap_guess: Literal["interpolation", "repetition"] = "repetition"
    # Mixing: this share of the crops get an intruder added (in power) to the frames their input shows,
    # while the target stays the crop alone: the unmasked frames' L1 (unmasked_weight) then asks the network
    # to take the intruder out, as a vocal remover takes the vocals out, and the masked frames' to fill
    # gaps from a mixed context.  The intruder: a synthetic voice (pipeline/voices.py; a library without
    # vocals shows the network none otherwise) at a ratio to the crop drawn from voices.VOCAL_DB where it
    # sounds, or another crop of the batch (WavLM's utterance mixing) at a gain drawn from mix_db dB.
    mix_prob: float = 0.9
    mix_source: Literal["voice", "batch"] = "voice"
    mix_db: tuple[float, float] = (-12.0, -3.0)
    voice_bank: int = 32  # voice: voices rendered at the start, each 4 crops long, cut at random offsets
    masked_weight: float = 1.0  # L1 on the masked frames
    unmasked_weight: float = 1.0  # L1 on the other frames (HuBERT's unmasked weight)
    next_weight: float = 0.0  # BCE of the next-segment head (0: task off; its gradients swamp the L1's)
    l1_weight: float = 1.0  # factor on the L1 terms (100 in the reference adversarial variant)
    adv_weight: float = 0.0  # adversarial generator loss (0: no discriminator)
    initial_mask: float = 1e-3  # pretraining: the first prediction of a white token (train/pretrain.py)
    # unmix: the mask the head starts at everywhere; None: the head as built (about 0.5), as a fine-tune's
    # from scratch.  Its bias moves about lr per step, so from 0.5 the mask takes thousands of steps to keep
    # clean bins whole (benchmarks/README.md, session 16).
    unmix_start: float | None = None
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.999)
    # Bookkeeping (in optimizer steps; 0 switches a feature off).
    log_every: int = 10
    val_every: int = 1000
    val_batches: int = 20  # validation batches per rank
    preview_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3  # checkpoints kept in the run directory
    num_workers: int = 2  # loader processes per rank

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.grad_accum, self.keep_last) <= 0:
            raise ValueError("steps, batch_size, grad_accum and keep_last must be positive")
        if self.effective_batch is not None and self.effective_batch % self.batch_size:
            raise ValueError(f"effective_batch ({self.effective_batch}) must be a multiple of "
                             f"batch_size ({self.batch_size})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {self.minutes}")
        if self.lr <= 0 or self.disc_lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr and disc_lr must be positive, warmup_steps >= 0, min_lr_ratio in [0, 1]")
        weights = self.masked_weight, self.unmasked_weight, self.next_weight, self.l1_weight, self.adv_weight
        if min(weights) < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0.0 < self.loss_power <= 1.0:
            raise ValueError(f"loss_power must be in (0, 1], got {self.loss_power}")
        if not 0.0 <= self.mix_prob <= 1.0 or self.mix_db[0] > self.mix_db[1]:
            raise ValueError(f"mix_prob must be in [0, 1] and mix_db (low, high), got {self.mix_prob}, "
                             f"{self.mix_db}")
        if self.voice_bank < 1:
            raise ValueError(f"voice_bank must be >= 1, got {self.voice_bank}")
        if self.db_weight < 0 or (self.db_weight > 0 and self.reconstruct == "residual"):
            raise ValueError(f"db_weight must be >= 0, and 0 with reconstruct=residual (its L1 is in dB "
                             f"already), got {self.db_weight}")
        if self.residual_db <= 0:
            raise ValueError(f"residual_db must be positive, got {self.residual_db}")
        starts = (self.initial_mask,) if self.unmix_start is None else (self.initial_mask, self.unmix_start)
        if not all(0.0 < start < 1.0 for start in starts):
            raise ValueError(f"initial_mask and unmix_start must be in (0, 1), got {self.initial_mask}, "
                             f"{self.unmix_start}")
        if min(self.log_every, self.val_every, self.val_batches, self.preview_every,
               self.checkpoint_every, self.num_workers) < 0:
            raise ValueError("log_every, val_every, val_batches, preview_every, checkpoint_every and "
                             "num_workers must be >= 0")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of ``world_size`` ranks."""
        if self.effective_batch is None:
            return self.grad_accum
        per_pass = self.batch_size * world_size
        if self.effective_batch % per_pass:
            raise ValueError(f"effective_batch ({self.effective_batch}) is not a multiple of batch_size x "
                             f"ranks ({per_pass})")
        return self.effective_batch // per_pass
