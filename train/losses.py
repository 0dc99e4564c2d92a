"""Loss functions: L1, RMSE and region-weighted L1, next-segment BCE, and the adversarial pieces.

Shapes: spectrograms ``[B, C, F, T]``, frame selections ``[B, T]`` (bool), logits ``[B]`` or any shape
for the discriminator.  Every loss is computed in float32, even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every element."""
    return (pred.float() - target.float()).abs().mean()


def rmse(pred: Tensor, target: Tensor) -> Tensor:
    """Root mean squared error over every element."""
    return (pred.float() - target.float()).square().mean().sqrt()


DISTANCES = {"l1": l1, "rmse": rmse}  # finetune.distance -> the loss


def compressed(x: Tensor, power: float) -> Tensor:
    """Magnitudes ``x ** power`` in float32 (``power`` 1: ``x`` itself); offset by 1e-6 so that the
    gradient stays finite at 0."""
    return x.float() if power == 1.0 else (x.float() + 1e-6) ** power


def region_l1(pred: Tensor, target: Tensor, selected: Tensor) -> tuple[Tensor, Tensor]:
    """Mean absolute error over the selected frames and over the others: two scalars.

    A region with no frame contributes 0.
    """
    per_frame = (pred.float() - target.float()).abs().mean(dim=(1, 2))  # [B, T]
    sel = selected.to(per_frame.dtype)
    rest = 1.0 - sel
    return ((per_frame * sel).sum() / sel.sum().clamp_min(1),
            (per_frame * rest).sum() / rest.sum().clamp_min(1))


def next_segment_bce(logit: Tensor, is_next: Tensor) -> Tensor:
    """BCE-with-logits of the next-segment head; ``is_next`` float or bool ``[B]``."""
    return F.binary_cross_entropy_with_logits(logit.float(), is_next.float())


def cut_tokens(spec: Tensor, selected: Tensor, token_frames: int) -> Tensor:
    """The selected tokens of every item as one batch: ``[B, C, F, T]`` -> ``[N, C, F, token_frames]``.

    A token (``token_frames`` consecutive frames from frame 0) is taken when any of its frames is
    selected; ``T`` must be a multiple of ``token_frames``.
    """
    b, c, f, t = spec.shape
    tokens = spec.reshape(b, c, f, t // token_frames, token_frames).permute(0, 3, 1, 2, 4)
    return tokens[selected.reshape(b, t // token_frames, token_frames).any(dim=-1)]


def bce_to(logits: Tensor, label: float) -> Tensor:
    """BCE-with-logits of every logit against the constant ``label``."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE pushing true tokens to 1 and reconstructed ones to 0 (mean of the two)."""
    return 0.5 * (bce_to(real_logits, 1.0) + bce_to(fake_logits, 0.0))


def generator_adv_loss(fake_logits: Tensor) -> Tensor:
    """BCE pushing the discriminator's scores of reconstructed tokens to 1."""
    return bce_to(fake_logits, 1.0)


def frozen_call(module: nn.Module, *args, prefix: str = ""):
    """Run ``module`` with the parameters whose names start with ``prefix`` (all by default) detached:
    gradients reach the inputs and the other parameters, never those weights.

    For the generator's pass through the discriminator, and for fine-tuning with a frozen encoder
    (no ``requires_grad`` toggling, no DDP hooks).
    """
    params = {name: p.detach() if name.startswith(prefix) else p for name, p in module.named_parameters()}
    return functional_call(module, params, args, strict=False)
