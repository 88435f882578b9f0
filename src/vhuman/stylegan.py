"""GenForce's StyleGAN (v1) generator and discriminator, state-dict compatible with GenForce checkpoints.

Written from the layer-by-layer specification of GenForce's published networks: module and buffer names mirror
GenForce's keys exactly, so its checkpoints load with ``strict=True`` and ours open in GenForce's code.
Equalised learning rate: layers store ``weight`` and use ``weight * wscale`` with ``wscale = gain / sqrt(fan_in)
* lr_mul``; biases act as ``bias * lr_mul``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vhuman.io import save_torch_atomic
from vhuman.latents import truncate

GAIN = math.sqrt(2.0)
SLOPE = 0.2


def channels_at(res: int, fmaps_base: int, fmaps_max: int) -> int:
    return min(fmaps_base // res, fmaps_max)


def _blur_kernel(channels: int) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = torch.outer(k, k) / 16
    return k.view(1, 1, 3, 3).repeat(channels, 1, 1, 1)


class Blur(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] / 16 filter (stored as a buffer, as GenForce does)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", _blur_kernel(channels))

    def forward(self, x):
        return F.conv2d(x, self.kernel, padding=1, groups=x.shape[1])


class DenseLayer(nn.Module):
    def __init__(self, in_features, out_features, gain=GAIN, lr_mul=1.0, activate=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.wscale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul, self.activate = lr_mul, activate

    def forward(self, x, extra=None):
        """``extra`` is added before the activation (the fine-tune's property input)."""
        x = F.linear(x.flatten(1), self.weight * self.wscale, self.bias * self.lr_mul)
        if extra is not None:
            x = x + extra
        return F.leaky_relu(x, SLOPE) if self.activate else x


class MappingNetwork(nn.Module):
    """z (+ label embedding) -> pixel norm -> dense layers with lr_mul -> w."""

    def __init__(self, z_dim=512, w_dim=512, label_size=0, num_layers=8, fmaps=512, lr_mul=0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.label_size, self.num_layers = z_dim, w_dim, label_size, num_layers
        if label_size:
            self.label_weight = nn.Parameter(torch.randn(label_size, z_dim))
        in_dim = z_dim * 2 if label_size else z_dim
        for i in range(num_layers):
            out_dim = w_dim if i == num_layers - 1 else fmaps
            setattr(self, f"dense{i}", DenseLayer(in_dim, out_dim, lr_mul=lr_mul))
            in_dim = out_dim

    @property
    def first_layer_width(self) -> int:
        return self.dense0.weight.shape[0]

    def forward(self, z, label=None, first_layer_extra=None):
        """w for z; ``first_layer_extra`` [N, fmaps] is added to the first layer's pre-activation."""
        if self.label_size:
            if label is None:
                raise ValueError(f"this generator is conditional: pass a label of size {self.label_size}")
            z = torch.cat([z, label @ self.label_weight], dim=1)
        x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        x = self.dense0(x, first_layer_extra)
        for i in range(1, self.num_layers):
            x = getattr(self, f"dense{i}")(x)
        return x


class Truncation(nn.Module):
    def __init__(self, w_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, w, psi=1.0, layers=None):
        return truncate(w, self.w_avg, self.num_layers, psi, layers)


class NoiseInjection(nn.Module):
    """One noise map shared by all channels, scaled per channel; the stored map makes sampling repeatable."""

    def __init__(self, channels, res):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise", torch.randn(1, 1, res, res))

    def forward(self, x, noise_mode="const"):
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise_mode == "none":
            return x
        else:
            noise = self.noise.to(x.dtype)
        # One fused pass that keeps x's memory layout (a broadcast product then a sum costs ~15x more on CPU).
        return torch.addcmul(x, noise, self.weight.view(1, -1, 1, 1).to(x.dtype))


class StyleModulation(nn.Module):
    """AdaIN's affine part: w -> (scale, shift) per channel; x * (scale + 1) + shift."""

    def __init__(self, channels, w_dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2 * channels, w_dim))
        self.bias = nn.Parameter(torch.zeros(2 * channels))
        self.wscale = 1.0 / math.sqrt(w_dim)

    def forward(self, x, w):
        style = F.linear(w, self.weight * self.wscale, self.bias).to(x.dtype)
        scale, shift = style.view(-1, 2, x.shape[1], 1, 1).unbind(1)
        return x * (scale + 1) + shift

    def modulate_normalised(self, x, w):
        """style(instance_norm(x), w) in one pass over x: per channel, x * a + c."""
        # Moments as E[x] and E[x^2] - E[x]^2 in float32 over the flattened plane: several times faster on CPU
        # than torch.var_mean (a single-threaded Welford pass there) and, in float32, as exact as this layer needs.
        if x.is_contiguous():
            flat = x.flatten(2).float()
            mean, mean_sq = flat.mean(2), (flat * flat).mean(2)
        else:  # channels-last: reduce over the spatial dims in place of a copying flatten
            xf = x.float()
            mean, mean_sq = xf.mean((2, 3)), (xf * xf).mean((2, 3))
        var = (mean_sq - mean.pow(2)).clamp(min=0)
        style = F.linear(w.float(), self.weight * self.wscale, self.bias)
        scale, shift = style.view(-1, 2, x.shape[1]).unbind(1)
        a = torch.rsqrt(var + 1e-8) * (scale + 1)  # per-channel factors stay in float32 (1e-8 underflows in half)
        shift = shift - mean * a
        a, shift = a.to(x.dtype)[..., None, None], shift.to(x.dtype)[..., None, None]
        return torch.addcmul(shift, x, a)


def _fused_kernel(weight, scale_down: bool):
    """3x3 kernel -> 4x4 kernel that does the 2x resampling and the 3x3 conv in one strided (transposed) conv."""
    w = F.pad(weight, (1, 1, 1, 1))
    w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
    return w * 0.25 if scale_down else w


class SynthesisLayer(nn.Module):
    """(up-sample) conv -> (blur) -> noise -> bias -> lrelu -> instance norm -> style. Layer 0 uses ``const``."""

    def __init__(self, in_channels, out_channels, res, w_dim, upsample=False, fused=False, first=False):
        super().__init__()
        self.first, self.upsample, self.fused = first, upsample, fused
        if first:
            self.const = nn.Parameter(torch.randn(1, out_channels, res, res))
        else:
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
            self.wscale = GAIN / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.apply_noise = NoiseInjection(out_channels, res)
        self.style = StyleModulation(out_channels, w_dim)
        if upsample:
            self.blur = Blur(out_channels)

    def _conv_weight(self, dtype):
        """The scaled (and, for fused up-sampling, 4x4 transposed) kernel. Under inference mode it is kept until
        the parameter changes: rebuilding it cost ~5 % of a 256x256 image on CPU at batch 1."""

        def build():
            weight = (self.weight * self.wscale).to(dtype)
            if self.upsample and self.fused:
                return _fused_kernel(weight, False).permute(1, 0, 2, 3).contiguous()
            return weight

        if not torch.is_inference_mode_enabled():
            return build()
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device, dtype)
        cached = getattr(self, "_weight_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, build())
            self._weight_cache = cached
        return cached[1]

    def forward(self, x, w, noise_mode="const"):
        if self.first:
            x = self.const.to(w.dtype).repeat(w.shape[0], 1, 1, 1)
        else:
            weight = self._conv_weight(x.dtype)
            if self.upsample and self.fused:
                x = F.conv_transpose2d(x, weight, stride=2, padding=1)
            else:
                if self.upsample:
                    x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = F.conv2d(x, weight, padding=1)
            if self.upsample:
                x = self.blur(x)
        x = self.apply_noise(x, noise_mode)
        # In place: x is always this layer's own fresh tensor (the repeated const, a conv, blur or addcmul result).
        x = F.leaky_relu(x.add_(self.bias.view(1, -1, 1, 1).to(x.dtype)), SLOPE, inplace=True)
        return self.style.modulate_normalised(x, w)


class ToRGB(nn.Module):
    def __init__(self, in_channels, image_channels=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(image_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(image_channels))
        self.wscale = 1.0 / math.sqrt(in_channels)

    def forward(self, x):
        return F.conv2d(x, (self.weight * self.wscale).to(x.dtype), self.bias.to(x.dtype))


class SynthesisNetwork(nn.Module):
    def __init__(self, resolution, w_dim=512, image_channels=3, fmaps_base=16384, fmaps_max=512, fused_scale="auto"):
        super().__init__()
        self.resolution = resolution
        self.num_blocks = int(math.log2(resolution)) - 1
        self.num_layers = 2 * self.num_blocks
        self.register_buffer("lod", torch.zeros(()))
        # Channels-last activations: oneDNN's convolutions (the transposed ones most) run up to 2x faster on CPU in
        # this layout; same results within float rounding. Not part of the checkpoint.
        self.channels_last = True
        for b in range(self.num_blocks):
            res = 4 * 2**b
            nf = channels_at(res, fmaps_base, fmaps_max)
            if b == 0:
                self.layer0 = SynthesisLayer(nf, nf, res, w_dim, first=True)
            else:
                fused = res >= 128 if fused_scale == "auto" else bool(fused_scale)
                prev = channels_at(res // 2, fmaps_base, fmaps_max)
                setattr(self, f"layer{2 * b}", SynthesisLayer(prev, nf, res, w_dim, upsample=True, fused=fused))
            setattr(self, f"layer{2 * b + 1}", SynthesisLayer(nf, nf, res, w_dim))
            setattr(self, f"output{b}", ToRGB(nf, image_channels))

    def forward(self, wp, noise_mode="const"):
        if float(self.lod) != 0.0:
            raise ValueError(f"lod is {float(self.lod)}: only fully grown generators (lod 0) are supported")
        x = None
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i}")(x, wp[:, i], noise_mode)
            if i == 0 and self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return getattr(self, f"output{self.num_blocks - 1}")(x).contiguous()


class StyleGANGenerator(nn.Module):
    """GenForce StyleGAN generator with the project's generator interface (see vhuman.generators)."""

    kind = "genforce"

    def __init__(
        self,
        resolution,
        z_dim=512,
        w_dim=512,
        label_size=0,
        mapping_layers=8,
        mapping_fmaps=512,
        mapping_lr_mul=0.01,
        image_channels=3,
        fmaps_base=16384,
        fmaps_max=512,
        fused_scale="auto",
    ):
        super().__init__()
        if resolution not in (8, 16, 32, 64, 128, 256, 512, 1024):
            raise ValueError(f"resolution must be a power of two in 8..1024, got {resolution}")
        self.settings = dict(
            resolution=resolution,
            z_dim=z_dim,
            w_dim=w_dim,
            label_size=label_size,
            mapping_layers=mapping_layers,
            mapping_fmaps=mapping_fmaps,
            mapping_lr_mul=mapping_lr_mul,
            image_channels=image_channels,
            fmaps_base=fmaps_base,
            fmaps_max=fmaps_max,
            fused_scale=fused_scale,
        )
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, label_size, mapping_layers, mapping_fmaps, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(resolution, w_dim, image_channels, fmaps_base, fmaps_max, fused_scale)
        self.num_layers = self.synthesis.num_layers
        self.truncation = Truncation(w_dim, self.num_layers)

    @property
    def w_avg(self):
        return self.truncation.w_avg

    def forward(self, z, label=None, truncation_psi=1.0, truncation_layers=None, noise_mode="const"):
        wp = self.truncation(self.mapping(z, label), truncation_psi, truncation_layers)
        return self.synthesis(wp, noise_mode)

    def save(self, path: str | Path) -> None:
        """GenForce's model-zoo layout ('generator' at the top), so the file opens in GenForce's own code too."""
        save_torch_atomic({"generator": self.state_dict()}, path)
