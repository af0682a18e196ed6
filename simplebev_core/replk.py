"""RepLKNet-style large-kernel blocks (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022).

Used by the `*_replk` encoders (`camencode_replk`, `res50_replk`, `effb0_replk`: the same
`refine` stack after each base encoder's output) to widen the receptive field of the stride-8
feature map (C channels) cheaply: a 31x31 depthwise kernel sees ~250 image pixels around each cell.

Training uses two parallel depthwise branches (large k x k and small s x s, each conv + BN):
the small branch eases optimisation of the large kernel. For inference the branches are
*structurally reparameterised* into a single depthwise k x k conv with bias, which gives the
same output in eval mode (BN then uses running statistics, so it is an affine map per channel
that folds into the preceding conv). `reparameterize_model` does that for a whole model.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int,
            groups: int = 1) -> nn.Sequential:
    """Conv (no bias: the BN's shift replaces it) + BatchNorm, 'same' padding for odd kernels."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                       groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_channels),
    ))


def fuse_conv_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the single conv equivalent to `branch` (conv_bn) with BN in eval mode.

    BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta, i.e. a per-output-channel scale and
    shift: the scale multiplies the conv weight, the shift becomes the bias.
    """
    conv, bn = branch.conv, branch.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    return weight, bias


class ReparamLargeKernelConv(nn.Module):
    """Depthwise k x k conv+BN in parallel with a depthwise s x s conv+BN, outputs summed.

    (N, C, H, W) -> (N, C, H, W). After `reparameterize()` the two branches are replaced by one
    depthwise k x k conv with bias (`fused`), equal to the sum in eval mode.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int):
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel % 2 == 0 or small_kernel > kernel_size:
            raise ValueError("need odd kernels with small <= large, "
                             f"got {kernel_size} and {small_kernel}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.large: nn.Sequential | None = conv_bn(channels, channels, kernel_size,
                                                   groups=channels)
        self.small: nn.Sequential | None = conv_bn(channels, channels, small_kernel,
                                                   groups=channels)
        self.fused: nn.Conv2d | None = None

    @property
    def is_fused(self) -> bool:
        return self.fused is not None

    def forward(self, x: Tensor) -> Tensor:
        # On CPU, oneDNN's depthwise conv is ~25x faster on channels-last input for large kernels
        # (measured: 31x31, C=128, 56x100: 6 ms vs 150 ms), but its backward is slower, so only
        # switch layouts when no graph is recorded (inference). The values are identical.
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            x = x.contiguous(memory_format=torch.channels_last)
            return self._apply_branches(x).contiguous()
        return self._apply_branches(x)

    def _apply_branches(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        return self.large(x) + self.small(x)

    @torch.no_grad()
    def reparameterize(self) -> bool:
        """Fuse the branches into `self.fused` in place; False if already fused.

        Exact only for BN in eval mode (running statistics); call it on a trained model.
        """
        if self.fused is not None:
            return False
        weight, bias = fuse_conv_bn(self.large)
        small_weight, small_bias = fuse_conv_bn(self.small)
        # Both convs are 'same'-padded and centred, so the small kernel is the centre of a
        # k x k kernel that is zero elsewhere.
        pad = (self.kernel_size - self.small_kernel) // 2
        weight = weight + F.pad(small_weight, (pad, pad, pad, pad))
        fused = nn.Conv2d(self.channels, self.channels, self.kernel_size,
                          padding=self.kernel_size // 2, groups=self.channels,
                          bias=True).to(device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias + small_bias)
        self.fused = fused
        # Deleting (not just bypassing) the branches keeps the state_dict and memory honest.
        self.large = None
        self.small = None
        return True


class RepLKBlock(nn.Module):
    """x + pw2(relu(lk(relu(pw1(bn(x)))))), all at C channels: (N, C, H, W) -> (N, C, H, W).

    pw1 / pw2 are 1x1 conv + BN (channel mixing around the per-channel large kernel); the
    pre-norm and the residual keep a stack of blocks easy to train on top of the encoder.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int):
        super().__init__()
        self.prenorm = nn.BatchNorm2d(channels)
        self.pw1 = conv_bn(channels, channels, 1)
        self.lk = ReparamLargeKernelConv(channels, kernel_size, small_kernel)
        self.pw2 = conv_bn(channels, channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.pw1(self.prenorm(x)))
        y = self.act(self.lk(y))
        return x + self.pw2(y)


def replk_stack(channels: int, blocks: int, kernel_size: int,
                small_kernel: int) -> nn.Sequential:
    """`blocks` RepLKBlocks in sequence: an encoder's `refine` stage, (N, C, H, W) -> same.

    With blocks=0 it is an empty Sequential: the identity, with nothing in the state_dict, so
    the plain encoders keep upstream's checkpoint layout and trace to no extra ops.
    """
    return nn.Sequential(*(RepLKBlock(channels, kernel_size, small_kernel)
                           for _ in range(blocks)))


def reparameterize_model(module: nn.Module) -> int:
    """Fuse every not-yet-fused ReparamLargeKernelConv inside `module` in place.

    Returns how many were fused (0 for models without any, or already fused). Put the model in
    eval mode for inference: the fused conv reproduces the branches with BN running statistics.
    """
    # Collect first: fusing replaces submodules, which must not happen while iterating.
    convs = [m for m in module.modules() if isinstance(m, ReparamLargeKernelConv)]
    return sum(conv.reparameterize() for conv in convs)
