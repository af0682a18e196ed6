"""Where a stride-8 feature "looks" in the image: the centroid of its impulse response.

The lift samples feature maps at the projection of each voxel centre, so it needs to know which
image position feature column i stands for. For a CNN that is the centroid of the feature's
effective receptive field: the response of feature (r, c) to an impulse at image pixel p,
|d (w . f[:, r, c]) / d image[:, p]| summed over colour channels (w a random channel mix), i.e.
the response to an infinitesimally small impulse, linearised at a random image (Luo et al.,
"Understanding the Effective Receptive Field", NeurIPS 2016). It depends on the weights, so
`measure_phase` averages it over seeds. Pixel coordinates are pixel-centre coordinates: pixel
p's centre is at p; `phase` is the centroid minus 8 * i.

Used by tests/core/test_encoders.py and bench/receptive_field.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

STRIDE = 8


Encoder = Callable[[Tensor], Tensor]


def impulse_response_centroid(encoder: Encoder, image_hw: tuple[int, int],
                              feature_rc: tuple[int, int],
                              generator: torch.Generator) -> tuple[float, float]:
    """(x, y) image centroid of one feature cell's impulse response, in pixels.

    encoder: (1, 3, H, W) -> (1, C, Hf, Wf); image_hw: (H, W); feature_rc: (row, column).
    """
    H, W = image_hw
    image = torch.rand(1, 3, H, W, generator=generator).requires_grad_(True)
    feats = encoder(image)
    r, c = feature_rc
    mix = torch.randn(feats.shape[1], generator=generator)
    (feats[0, :, r, c] * mix).sum().backward()
    response = image.grad.abs().sum(dim=(0, 1)).double()  # (H, W)
    total = response.sum()
    xs = torch.arange(W, dtype=torch.float64)
    ys = torch.arange(H, dtype=torch.float64)
    return float((response.sum(0) * xs).sum() / total), float((response.sum(1) * ys).sum() / total)


@dataclass
class PhaseMeasurement:
    """Centroid minus STRIDE * index over seeds, pixels: mean and spread for x and y."""

    x: Tensor  # (seeds,)
    y: Tensor  # (seeds,)

    def summary(self) -> str:
        def stats(v: Tensor) -> str:
            lo, hi = float(v.min()), float(v.max())
            return f"{float(v.mean()):+.2f} (std {float(v.std()):.2f}, {lo:+.2f}..{hi:+.2f})"

        return f"x {stats(self.x)}, y {stats(self.y)} over {len(self.x)} seeds"


def measure_phase(build: Callable[[], nn.Module], image_hw: tuple[int, int],
                  seeds: range) -> PhaseMeasurement:
    """Build a fresh encoder per seed (eval mode) and measure the impulse-response centroid of
    the feature cell nearest the image centre, where zero padding and image-wide operations
    (InstanceNorm, squeeze-excitation) pull the centroid least."""
    H, W = image_hw
    rc = ((H // STRIDE) // 2, (W // STRIDE) // 2)
    xs, ys = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        encoder = build().eval()
        generator = torch.Generator().manual_seed(1000 + seed)
        x, y = impulse_response_centroid(encoder, image_hw, rc, generator)
        xs.append(x - STRIDE * rc[1])
        ys.append(y - STRIDE * rc[0])
    return PhaseMeasurement(torch.tensor(xs), torch.tensor(ys))
