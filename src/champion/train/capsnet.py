"""CapsNet (Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules"): routing, losses, builder.

The network sees normalised images (N, C, H, W), like every classifier in `champion.train.models`, and its
`forward` returns the lengths of the class capsules, shaped (N, num_classes): the class scores, whose
argmax is the prediction. Lengths lie in [0, 1) and are not logits; the model is trained with
`CapsNet.loss` (margin loss plus the down-weighted reconstruction loss), never with cross-entropy.

    net = capsnet(channels=1, num_classes=10, image_size=(28, 28))
    out = net.loss(x_normalised, targets, images01=x01)   # CapsuleLoss(total, scores, margin, reconstruction)
    out.total.backward()
    accuracy = (out.scores.argmax(1) == targets).float().mean()

Only the classifier path (conv1, primary capsules, routing) runs in `forward`, so an ONNX export holds
no decoder; the decoder is a regulariser used by `loss` and, for inspection, `reconstruct`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from champion.errors import ConfigError

RECONSTRUCTION_WEIGHT = 0.0005  # the paper's: small enough that reconstruction does not dominate the margin loss


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """The capsule non-linearity v = |s|^2 / (1 + |s|^2) * s / |s| (eq. 1): keeps direction, maps length into [0, 1).

    Args:
        s: capsule inputs, the capsule's vector along `dim`.
        dim: the axis holding each capsule's components.
        eps: added under the square root, so that s = 0 gives v = 0 with a finite gradient (not 0/0).
    """
    sq = (s * s).sum(dim, keepdim=True)
    return sq / (1 + sq) * s / torch.sqrt(sq + eps)


def capsule_lengths(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """|v| over the last axis; `eps` under the root keeps the gradient finite for a zero capsule."""
    return torch.sqrt((v * v).sum(-1) + eps)


def route(u_hat: torch.Tensor, iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing by agreement (Procedure 1) from prediction vectors to parent capsules.

    b_ij starts at 0; each iteration c_ij = softmax_j(b_ij) (over the parents: each child splits its
    vote among the classes), s_j = sum_i c_ij u_hat_j|i, v_j = squash(s_j), b_ij += u_hat_j|i . v_j.
    The iteration count is fixed Python, so tracing unrolls it and the graph exports to ONNX with a
    dynamic batch. Gradients flow through every iteration, as in the paper (nothing is detached).

    Args:
        u_hat: prediction vectors û_j|i, shaped (N, children, parents, D).
        iterations: routing iterations (the paper uses 3); at least 1.

    Returns:
        v: parent capsules (N, parents, D); c: the coupling coefficients (N, children, parents)
        used for that final v, summing to 1 over the parents.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least one iteration, got {iterations}")
    b = torch.zeros_like(u_hat[..., 0])  # per example, like u_hat; zeros_like keeps the batch axis symbolic
    for r in range(iterations):
        c = F.softmax(b, dim=2)
        v = squash((c.unsqueeze(-1) * u_hat).sum(1))
        if r < iterations - 1:  # the last update would only feed an iteration that never runs
            b = b + (u_hat * v.unsqueeze(1)).sum(-1)
    return v, c


def margin_loss(
    lengths: torch.Tensor, targets: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5
) -> torch.Tensor:
    """Margin loss (eq. 4): T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2, summed over
    classes, averaged over the batch.

    Args:
        lengths: capsule lengths |v_k|, shaped (N, classes).
        targets: class indices, shaped (N,).
        lam: down-weights absent classes, so early training does not shrink every capsule.
    """
    t = F.one_hot(targets, lengths.shape[1]).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths) ** 2
    absent = lam * (1 - t) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(1).mean()


def reconstruction_loss(reconstruction: torch.Tensor, images01: torch.Tensor) -> torch.Tensor:
    """Sum of squared pixel errors per image, averaged over the batch (unweighted).

    Args:
        reconstruction: the decoder's output in [0, 1], (N, C, H, W).
        images01: the images the model saw, in [0, 1] (before normalisation), (N, C, H, W).
    """
    return ((reconstruction - images01) ** 2).flatten(1).sum(1).mean()


def rescale01(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max rescale each image's channels to [0, 1]: the reconstruction target when the [0, 1] images are
    not at hand. Normalisation is a positive affine map per channel, so this recovers the original exactly
    for every channel whose pixels span 0 to 1 (MNIST digits do); a constant channel becomes 0."""
    flat = x.flatten(2)
    lo, hi = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).reshape(x.shape)


class CapsuleLoss(NamedTuple):
    total: torch.Tensor  # margin + reconstruction_weight * reconstruction: what to backpropagate
    scores: torch.Tensor  # capsule lengths (N, classes), the same tensor `forward` returns
    margin: torch.Tensor
    reconstruction: torch.Tensor  # unweighted, summed over pixels, mean over the batch


class CapsNet(nn.Module):
    """Conv1 -> PrimaryCaps -> DigitCaps with dynamic routing; a decoder for the reconstruction loss.

    Args:
        channels: input channels.
        num_classes: one DigitCaps capsule per class.
        image_size: (H, W); the number of primary capsules follows from it (28x28 -> 32 * 6 * 6 = 1152).
        conv_channels: Conv1 filters (paper: 256).
        primary_caps_channels: PrimaryCaps capsule channels (paper: 32).
        primary_caps_dim: PrimaryCaps capsule size (paper: 8).
        digit_caps_dim: DigitCaps capsule size (paper: 16).
        routing_iterations: paper: 3.
        decoder_widths: hidden widths of the reconstruction decoder (paper: 512, 1024).
        reconstruction_weight: the reconstruction loss's weight in the total (paper: 0.0005).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        conv_channels: int = 256,
        primary_caps_channels: int = 32,
        primary_caps_dim: int = 8,
        digit_caps_dim: int = 16,
        routing_iterations: int = 3,
        decoder_widths: tuple[int, int] = (512, 1024),
        reconstruction_weight: float = RECONSTRUCTION_WEIGHT,
    ) -> None:
        super().__init__()
        h, w = image_size
        # 9x9 valid conv, then 9x9 valid conv with stride 2.
        ph, pw = (h - 8 - 9) // 2 + 1, (w - 8 - 9) // 2 + 1
        if ph < 1 or pw < 1:
            raise ConfigError(f"capsnet needs images of at least 17x17 pixels (two 9x9 convolutions), got {h}x{w}")
        self.image_shape = (channels, h, w)
        self.num_classes = num_classes
        self.primary_caps_channels = primary_caps_channels
        self.primary_caps_dim = primary_caps_dim
        self.num_primary_caps = primary_caps_channels * ph * pw
        self.routing_iterations = routing_iterations
        self.reconstruction_weight = reconstruction_weight

        self.conv1 = nn.Conv2d(channels, conv_channels, 9)
        self.primary_caps = nn.Conv2d(conv_channels, primary_caps_channels * primary_caps_dim, 9, stride=2)
        # W_ij: one (digit_caps_dim x primary_caps_dim) matrix per (primary capsule i, class j). The paper gives
        # no init; 0.01 (as common re-implementations use) starts the class capsules short but not vanishing.
        self.weight = nn.Parameter(
            0.01 * torch.randn(self.num_primary_caps, num_classes, digit_caps_dim, primary_caps_dim)
        )
        d1, d2 = decoder_widths
        self.decoder = nn.Sequential(
            nn.Linear(num_classes * digit_caps_dim, d1), nn.ReLU(inplace=True),
            nn.Linear(d1, d2), nn.ReLU(inplace=True),
            nn.Linear(d2, channels * h * w), nn.Sigmoid(),
        )  # fmt: skip

    def prediction_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """û_j|i = W_ij u_i for every primary capsule i and class j: (N, primary capsules, classes, D)."""
        out = self.primary_caps(F.relu(self.conv1(x)))
        n, _, ph, pw = out.shape
        # Channel k * dim + d is component d of capsule channel k; capsules are ordered (channel, row, column).
        u = out.reshape(n, self.primary_caps_channels, self.primary_caps_dim, ph * pw).permute(0, 1, 3, 2)
        u = squash(u.reshape(n, self.num_primary_caps, self.primary_caps_dim))
        return torch.einsum("ijdk,nik->nijd", self.weight, u)

    def forward_with_capsules(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (capsule lengths, (N, classes)) and the class capsules v (N, classes, D)."""
        v, _ = route(self.prediction_vectors(x), self.routing_iterations)
        return capsule_lengths(v), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores: the lengths |v_j|, (N, classes). One tensor, so the module exports as is."""
        return self.forward_with_capsules(x)[0]

    def reconstruct(self, v: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Decode images in [0, 1], (N, C, H, W), from the class capsules with all but one masked to 0.

        Args:
            v: class capsules (N, classes, D).
            targets: the capsule to keep per example: the true class while training; None keeps the
                longest capsule (the predicted class), as at inference.
        """
        keep = capsule_lengths(v).argmax(1) if targets is None else targets
        mask = F.one_hot(keep, self.num_classes).to(v.dtype).unsqueeze(-1)
        return self.decoder((v * mask).flatten(1)).reshape(-1, *self.image_shape)

    def loss(self, x: torch.Tensor, targets: torch.Tensor, images01: torch.Tensor | None = None) -> CapsuleLoss:
        """The training objective: margin loss + reconstruction_weight * reconstruction loss.

        Args:
            x: normalised images (N, C, H, W), as `forward` takes them.
            targets: class indices (N,); they also pick the capsule the decoder sees.
            images01: the same images in [0, 1] before normalisation, the reconstruction target. Pass them
                when you have them; None rebuilds them from `x` with `rescale01` (exact when each image
                channel spans 0 to 1, otherwise a per-image contrast stretch).
        """
        scores, v = self.forward_with_capsules(x)
        target = rescale01(x.detach()) if images01 is None else images01
        margin = margin_loss(scores, targets)
        reconstruction = reconstruction_loss(self.reconstruct(v, targets), target)
        return CapsuleLoss(margin + self.reconstruction_weight * reconstruction, scores, margin, reconstruction)


def capsnet(channels: int, num_classes: int, image_size: tuple[int, int]) -> CapsNet:
    """The paper's CapsNet (256 conv filters, 32 x 8D primary capsules, 16D class capsules, 3 routing iterations).

    For 28x28 grey digits: 8.2M parameters, as in the paper; 6.8M without the decoder, which the ONNX
    export leaves out.
    """
    return CapsNet(channels, num_classes, image_size)
