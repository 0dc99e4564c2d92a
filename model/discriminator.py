"""A small convolutional discriminator for the optional adversarial loss (PatchGAN-like)."""

from __future__ import annotations

from torch import Tensor, nn

from specbert.model.precision import float32_region


class Discriminator(nn.Module):
    """Strided (4, 3) convs that halve the bins and keep the frames, BatchNorm, LeakyReLU.

    ``x [B, C, F, T] -> logits [B, F / 2**layers, T]`` (float32): one logit per frame and band of bins,
    each seeing a patch of the spectrogram.
    """

    def __init__(self, in_channels: int = 2, channels: int = 32, layers: int = 4):
        super().__init__()
        stages: list[nn.Module] = []
        width = in_channels
        for i in range(layers):
            out = channels * 2**i
            stages.append(nn.Conv2d(width, out, (4, 3), stride=(2, 1), padding=(1, 1), bias=i == 0))
            if i > 0:
                stages.append(nn.BatchNorm2d(out))
            stages.append(nn.LeakyReLU(0.2))
            width = out
        self.body = nn.Sequential(*stages)
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        with float32_region(x):
            return self.out(h.float())[:, 0]
