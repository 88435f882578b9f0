"""GenForce's StyleGAN (v1) discriminator, state-dict compatible with GenForce checkpoints.

Blocks of two equalised 3x3 convolutions with blur before each down-sampling, a minibatch standard-deviation layer
at 4x4, then two dense layers; the fine-tune's realism loss conditions it on the properties (vhuman.conditional).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vhuman.stylegan import GAIN, SLOPE, Blur, DenseLayer, _fused_kernel, channels_at


class DownsampleConv(nn.Module):
    """blur -> 3x3 conv with bias -> 2x2 average pool -> lrelu.

    GenForce's two forms (``fused_scale`` or not) are one function: a pool of a conv is a conv. Both compute here as
    one stride-2 conv with the 4x4 kernel that folds the pool into the 3x3 one, without the full-size conv output and
    with 2.25x fewer multiply-adds; the checkpoint's ``fused_scale`` names only the form it was trained in.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.blur = Blur(in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.wscale = GAIN / math.sqrt(in_channels * 9)

    def forward(self, x):
        x = F.conv2d(self.blur(x), _fused_kernel(self.weight * self.wscale, True), self.bias, stride=2, padding=1)
        return F.leaky_relu(x, SLOPE)


class Conv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.wscale = GAIN / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x):
        return F.leaky_relu(F.conv2d(x, self.weight * self.wscale, self.bias, padding=self.padding), SLOPE)


def minibatch_std(x, group_size=4, eps=1e-8):
    """Append the group's feature standard deviation as one extra channel (sample i is in group i mod N/G)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"batch size {n} must be divisible by the minibatch-std group size {g}")
    y = x.view(g, -1, c, h, w)
    y = (y - y.mean(0)).pow(2).mean(0).add(eps).sqrt().mean(dim=(1, 2, 3))
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class StyleGANDiscriminator(nn.Module):
    """GenForce StyleGAN discriminator (lod 0): from-RGB at the top, conv blocks down to 4x4, mbstd, two dense."""

    def __init__(
        self,
        resolution,
        image_channels=3,
        label_size=0,
        fused_scale="auto",
        minibatch_std_group_size=4,
        fmaps_base=16384,
        fmaps_max=512,
    ):
        super().__init__()
        self.resolution, self.label_size, self.group_size = resolution, label_size, minibatch_std_group_size
        self.settings = dict(
            resolution=resolution,
            image_channels=image_channels,
            label_size=label_size,
            fused_scale=fused_scale,
            minibatch_std_group_size=minibatch_std_group_size,
            fmaps_base=fmaps_base,
            fmaps_max=fmaps_max,
        )
        self.num_blocks = int(math.log2(resolution)) - 1
        self.register_buffer("lod", torch.zeros(()))
        for b in range(self.num_blocks):
            res = resolution // 2**b
            nf = channels_at(res, fmaps_base, fmaps_max)
            setattr(self, f"input{b}", Conv(image_channels, nf, 1))
            if res > 4:
                setattr(self, f"layer{2 * b}", Conv(nf, nf, 3))
                setattr(self, f"layer{2 * b + 1}", DownsampleConv(nf, channels_at(res // 2, fmaps_base, fmaps_max)))
            else:
                setattr(self, f"layer{2 * b}", Conv(nf + 1, nf, 3))
                setattr(self, f"layer{2 * b + 1}", DenseLayer(nf * 16, channels_at(2, fmaps_base, fmaps_max)))
                setattr(
                    self,
                    f"layer{2 * b + 2}",
                    DenseLayer(channels_at(2, fmaps_base, fmaps_max), max(label_size, 1), gain=1.0, activate=False),
                )

    def features(self, image):
        """Activations before the last dense layer (nf(2) per sample), for projection conditioning."""
        if float(self.lod) != 0.0:
            raise ValueError(f"lod is {float(self.lod)}: only fully grown discriminators (lod 0) are supported")
        # Channels-last: the blur's depthwise convolutions are several times faster there on the CPU (the fine-tune's
        # discriminator pass 1.2x faster in float32), the same function.
        x = self.input0(image.contiguous(memory_format=torch.channels_last))
        last = self.num_blocks - 1
        for b in range(last):
            x = getattr(self, f"layer{2 * b + 1}")(getattr(self, f"layer{2 * b}")(x))
        x = getattr(self, f"layer{2 * last}")(minibatch_std(x, self.group_size))
        return getattr(self, f"layer{2 * last + 1}")(x)

    def score(self, features):
        return getattr(self, f"layer{2 * self.num_blocks}")(features)

    def forward(self, image, label=None):
        x = self.score(self.features(image))
        if self.label_size:
            if label is None:
                raise ValueError(f"this discriminator is conditional: pass a label of size {self.label_size}")
            x = (x * label).sum(dim=1, keepdim=True)
        return x
