"""Augmentation of whole batches as tensors: random horizontal flip and random-resized-crop.

Every image gets its own random crop and flip, computed for the whole batch at once (one
`affine_grid` + `grid_sample`), so augmentation costs one vectorised op per batch instead of a
PIL transform per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchAugment(nn.Module):
    """Applied to float batches in [0, 1] during training only (before the model's normalisation).

    Args:
        hflip: flip each image left-right with probability 0.5.
        crop_scale: (min, max) fraction of the image area a random crop covers, or None for no crop.
        crop_ratio: (min, max) aspect ratio of the crop, sampled log-uniformly as torchvision does.
    """

    def __init__(
        self, hflip: bool = False, crop_scale: tuple[float, float] | None = None, crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    ) -> None:
        super().__init__()
        self.hflip, self.crop_scale, self.crop_ratio = hflip, crop_scale, crop_ratio

    @property
    def active(self) -> bool:
        return self.hflip or self.crop_scale is not None

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        opts = {"device": x.device, "generator": generator}
        if self.crop_scale is not None:
            area = torch.empty(n, device=x.device).uniform_(*self.crop_scale, generator=generator)
            low, high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            log_ratio = torch.empty(n, device=x.device).uniform_(low, high, generator=generator)
            ratio = log_ratio.exp()
            # Crop width/height as fractions of the image side (clamped: the crop stays inside).
            w = (area * ratio).sqrt().clamp(max=1.0)
            h = (area / ratio).sqrt().clamp(max=1.0)
            cx = (torch.rand(n, **opts) * 2 - 1) * (1 - w)
            cy = (torch.rand(n, **opts) * 2 - 1) * (1 - h)
            sx = w
            if self.hflip:
                sx = torch.where(torch.rand(n, **opts) < 0.5, -w, w)
            theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
            theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.hflip:
            flip = (torch.rand(n, **opts) < 0.5).view(n, 1, 1, 1)
            return torch.where(flip, x.flip(-1), x)
        return x
