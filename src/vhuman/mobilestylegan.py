"""MobileStyleGAN (Belousov 2021): StyleGAN2-FFHQ's own mapping network and a distilled wavelet synthesis network.

Written from the layer layout of the published export (the IR files that ``vhuman.mobilestylegan_ir`` reads):

* mapping: pixel norm, then 8 x (linear 512 -> 512, bias, leaky ReLU 0.2, gain sqrt 2); the learning-rate
  multiplier is already folded into the weights. Its W is StyleGAN2-FFHQ's W.
* synthesis: a learned 512x4x4 constant and a modulated 3x3 conv at 4x4; then 7 blocks up to 512x512, each a
  modulated inverse Haar wavelet up-sampling (4C channels at HxW -> C at 2Hx2W) and two modulated
  depthwise-separable convs (depthwise 3x3, then 1x1); then a modulated 1x1 conv to 12 channels, the Haar bands of
  the 3x1024x1024 image. Every conv is followed by a constant noise map (baked in at export), a bias and leaky
  ReLU 0.2 (no gain). Demodulation does not depend on the style and is folded into the weights.

Per-layer codes: 23 style inputs, one per affine, in drawing order (``STYLE_INPUTS``): 0 the 4x4 conv; for block b
(0..6, output 2^(b+3) pixels) 1 + 3b its up-sampling, 2 + 3b and 3 + 3b its two convs; 22 the to-wavelets conv.
The export feeds one w to all of them, so ``truncate``'s repeated w draws exactly the published faces.

Because the wavelet is Haar, the 2x2 average of the 1024 image is half the low band: box-filtered images of 512
pixels or less come from the bands with no inverse transform, exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vhuman.io import save_torch_atomic

SLOPE = 0.2
MAPPING_GAIN = math.sqrt(2.0)
BLOCK_CHANNELS = (512, 512, 512, 512, 256, 128, 64)  # output channels of the 7 blocks, 8x8 .. 512x512
FIRST_CHANNELS = 512
WAVELET_CHANNELS = 12  # 3 colours x 4 Haar bands
FULL_RESOLUTION = 1024
KIND = "vhuman-mobilestylegan-generator"


def style_inputs(num_blocks: int = len(BLOCK_CHANNELS)) -> list[str]:
    names = ["conv 4x4"]
    for b in range(num_blocks):
        res = 2 ** (b + 3)
        names += [f"up-sampling to {res}x{res}", f"conv1 {res}x{res}", f"conv2 {res}x{res}"]
    return names + [f"to wavelets {2 ** (num_blocks + 2)}x{2 ** (num_blocks + 2)}"]


STYLE_INPUTS = style_inputs()


class MobileMapping(nn.Module):
    """z -> pixel norm -> 8 x (linear, leaky ReLU, gain) -> w.

    StyleGAN2 trained this network with a learning-rate multiplier of 0.01 on equalised weights (each used as
    ``stored * lr_mul / sqrt(fan_in)``, biases as ``stored * lr_mul``); the export folds those factors in. An
    optimiser that trains the folded weights takes steps that much smaller (``learning_rate_scales``) so that one
    step moves the network as far as it moved in StyleGAN2's own training: unscaled, an Adam step of 1e-3 is 2 %
    of a weight's typical size and a few dozen steps draw no face."""

    LR_MUL = 0.01

    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_layers: int = 8):
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers = z_dim, w_dim, num_layers
        self.dense = nn.ModuleList(nn.Linear(z_dim if i == 0 else w_dim, w_dim) for i in range(num_layers))

    @property
    def first_layer_width(self) -> int:
        return self.dense[0].out_features

    def learning_rate_scales(self) -> dict[str, float]:
        """Per parameter name, the factor on an optimiser's learning rate that undoes the folded equalisation."""
        return {
            name: self.LR_MUL / math.sqrt(p.shape[1]) if p.ndim == 2 else self.LR_MUL
            for name, p in self.named_parameters()
        }

    def forward(self, z: torch.Tensor, first_layer_extra: torch.Tensor | None = None) -> torch.Tensor:
        """w for z; ``first_layer_extra`` [N, w_dim] is added to the first layer's pre-activation."""
        x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        for i, lin in enumerate(self.dense):
            x = lin(x)
            if i == 0 and first_layer_extra is not None:
                x = x + first_layer_extra
            x = F.leaky_relu(x, SLOPE) * MAPPING_GAIN
        return x


class StyleAffine(nn.Linear):
    """w -> one factor per input channel; ``gain`` is the export's scale (1/sqrt(fan-in)) where it has one."""

    def __init__(self, w_dim: int, channels: int, scaled: bool = True):
        super().__init__(w_dim, channels)
        self.scaled = scaled
        if scaled:
            self.register_buffer("gain", torch.ones(()))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = super().forward(w)
        return s * self.gain if self.scaled else s


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, C] (a view when x is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def _from_rows(rows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H*W, C] -> [N, C, H, W] in channels-last memory (a view)."""
    return rows.view(rows.shape[0], height, width, rows.shape[2]).permute(0, 3, 1, 2)


class NoisyBias(nn.Module):
    """The constant noise map and the per-channel bias that follow each conv; added in one pass with the 1x1 conv."""

    def __init__(self, channels: int, res: int):
        super().__init__()
        self.register_buffer("noise", torch.zeros(1, 1, res, res))
        self.bias = nn.Parameter(torch.zeros(channels))

    def rows(self, dtype: torch.dtype) -> torch.Tensor:
        """noise + bias as [1, H*W, C], the layout of the 1x1 conv's output. Under inference mode it is kept until
        either changes: at 512x512 it is a whole image's worth of memory to write."""

        def build():
            return (self.noise.flatten(1).transpose(0, 1) + self.bias).to(dtype).unsqueeze(0)

        if not torch.is_inference_mode_enabled():
            return build()
        key = (self.noise.data_ptr(), self.noise._version, self.bias.data_ptr(), self.bias._version, dtype)
        cached = getattr(self, "_rows_cache", None)
        if cached is None or cached[0] != key:
            cached = self._rows_cache = (key, build())
        return cached[1]


class ModulatedConv(nn.Module):
    """The 4x4 layer: a modulated dense 3x3 conv, noise, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, res: int, w_dim: int):
        super().__init__()
        self.affine = StyleAffine(w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 3, 3))
        self.noise_bias = NoisyBias(out_channels, res)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x * self.affine(w).to(x.dtype)[:, :, None, None], self.weight.to(x.dtype), padding=1)
        x = x + self.noise_bias.noise.to(x.dtype) + self.noise_bias.bias.to(x.dtype).view(1, -1, 1, 1)
        return F.leaky_relu(x, SLOPE).contiguous(memory_format=torch.channels_last)


class ModulatedSeparableConv(nn.Module):
    """Modulation, depthwise 3x3, 1x1, noise, bias, leaky ReLU.

    The modulation is per input channel, so it commutes with the depthwise conv and is folded into each face's
    1x1 weights: one batched matrix product does the 1x1 conv, the modulation, the noise and the bias.
    """

    def __init__(self, in_channels: int, out_channels: int, res: int, w_dim: int):
        super().__init__()
        self.affine = StyleAffine(w_dim, in_channels)
        self.weight_dw = nn.Parameter(torch.zeros(in_channels, 1, 3, 3))
        self.weight_pw = nn.Parameter(torch.zeros(out_channels, in_channels))
        self.noise_bias = NoisyBias(out_channels, res)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, _, h, wd = x.shape
        x = F.conv2d(x, self.weight_dw.to(x.dtype), padding=1, groups=x.shape[1])
        per_face = self.weight_pw.unsqueeze(0) * self.affine(w).unsqueeze(1)  # [N, Cout, Cin]
        rows = _modulated_1x1(x, per_face.to(x.dtype)).add_(self.noise_bias.rows(x.dtype))
        return _from_rows(F.leaky_relu_(rows, SLOPE), h, wd)


def _modulated_1x1(x: torch.Tensor, per_face: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv with each face's own weights [N, Cout, Cin], as rows [N, H*W, Cout]. One face is oneDNN's
    convolution (on the CPU up to 3.5x faster than a batched matrix product of these thin shapes), more faces one
    batched matrix product."""
    if x.shape[0] == 1:
        return _as_rows(F.conv2d(x, per_face[0, :, :, None, None]))
    return torch.bmm(_as_rows(x), per_face.transpose(1, 2))


def haar_inverse(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse one-level Haar transform of ``x * scale`` (per channel): [N, 4C, H, W] (C low bands, then 3 high
    bands per channel) -> [N, C, 2H, 2W] in channels-last memory, as the export's six transposed convs with
    filters (1, 1)/sqrt 2 and (1, -1)/sqrt 2 compute it. Written straight into the output's layout."""
    n, c4, h, w = x.shape
    c = c4 // 4
    half = torch.full((n, c4), 0.5, dtype=x.dtype, device=x.device) if scale is None else scale.to(x.dtype) * 0.5
    rows = x.permute(0, 2, 3, 1) * half[:, None, None, :]  # halving is exact, so it may come first
    low, high = rows[..., :c], rows[..., c:].unflatten(-1, (c, 3))
    b0, b1, b2 = high.unbind(-1)
    s, d, t, u = low + b0, low - b0, b1 + b2, b1 - b2
    if torch.is_grad_enabled() and rows.requires_grad:  # out= writes have no gradient: stack instead
        top, bottom = torch.stack([s + t, s - t], dim=3), torch.stack([d + u, d - u], dim=3)
        out = torch.stack([top, bottom], dim=2)
    else:
        out = torch.empty(n, h, 2, w, 2, c, dtype=x.dtype, device=x.device)
        torch.add(s, t, out=out[:, :, 0, :, 0])
        torch.sub(s, t, out=out[:, :, 0, :, 1])
        torch.add(d, u, out=out[:, :, 1, :, 0])
        torch.sub(d, u, out=out[:, :, 1, :, 1])
    return out.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


class WaveletUpsample(nn.Module):
    """Per-channel modulation (no scale), then the inverse Haar transform: 4C channels -> C at twice the size."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.affine = StyleAffine(w_dim, in_channels, scaled=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return haar_inverse(x, self.affine(w))


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, res: int, w_dim: int):
        super().__init__()
        self.up = WaveletUpsample(in_channels, w_dim)
        self.conv1 = ModulatedSeparableConv(in_channels // 4, out_channels, res, w_dim)
        self.conv2 = ModulatedSeparableConv(out_channels, out_channels, res, w_dim)

    def forward(self, x: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
        """``wp`` holds this block's three codes: up-sampling, conv1, conv2."""
        return self.conv2(self.conv1(self.up(x, wp[:, 0]), wp[:, 1]), wp[:, 2])


class ToWavelets(nn.Module):
    """A modulated 1x1 conv (no demodulation) to the 12 Haar bands of the image, plus a bias."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.affine = StyleAffine(w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(WAVELET_CHANNELS, in_channels))
        self.bias = nn.Parameter(torch.zeros(WAVELET_CHANNELS))

    def forward(self, x: torch.Tensor, w: torch.Tensor, bands: int = WAVELET_CHANNELS) -> torch.Tensor:
        """The first ``bands`` output channels (3: the low bands alone, all a box-filtered image needs)."""
        per_face = self.weight[:bands].unsqueeze(0) * self.affine(w).unsqueeze(1)
        rows = _modulated_1x1(x, per_face.to(x.dtype)).add_(self.bias[:bands].to(x.dtype))
        return _from_rows(rows, x.shape[2], x.shape[3])


class MobileSynthesis(nn.Module):
    """Per-layer codes [N, 23, w_dim] -> RGB in about [-1, 1] at ``resolution`` (box-filtered below 1024)."""

    def __init__(self, resolution: int = 256, w_dim: int = 512):
        super().__init__()
        if resolution not in tuple(2**k for k in range(3, 11)):
            raise ValueError(f"resolution must be a power of two in 8..{FULL_RESOLUTION}, got {resolution}")
        self.resolution = resolution
        self.const = nn.Parameter(torch.zeros(1, FIRST_CHANNELS, 4, 4))
        self.conv = ModulatedConv(FIRST_CHANNELS, FIRST_CHANNELS, 4, w_dim)
        blocks, channels = [], FIRST_CHANNELS
        for b, out_channels in enumerate(BLOCK_CHANNELS):
            blocks.append(SynthesisBlock(channels, out_channels, 2 ** (b + 3), w_dim))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.to_wavelets = ToWavelets(channels, w_dim)
        self.num_layers = 2 + 3 * len(blocks)

    def features(self, wp: torch.Tensor) -> torch.Tensor:
        """The last block's activations, [N, 64, 512, 512] (channels-last)."""
        x = self.conv(self.const.to(wp.dtype).expand(wp.shape[0], -1, -1, -1), wp[:, 0])
        for b, block in enumerate(self.blocks):
            x = block(x, wp[:, 1 + 3 * b : 4 + 3 * b])
        return x

    def forward(self, wp: torch.Tensor) -> torch.Tensor:
        if wp.dim() != 3 or wp.shape[1] != self.num_layers:
            raise ValueError(f"expected per-layer codes [N, {self.num_layers}, w_dim], got {list(wp.shape)}")
        if wp.device.type == "cpu" and wp.shape[0] > 1:
            # One face at a time on the CPU: its activations stay in cache longer and its 1x1 convs run as
            # oneDNN convolutions (benchmarks/bench_mobilestylegan.py: faster per face than whole batches).
            return torch.cat([self(one) for one in wp.split(1)])
        x = self.features(wp)
        last = self.num_layers - 1
        if self.resolution == FULL_RESOLUTION:
            return haar_inverse(self.to_wavelets(x, wp[:, last])).contiguous()
        image = self.to_wavelets(x, wp[:, last], bands=3) * 0.5  # the 2x2 box filter of the 1024 image
        factor = x.shape[-1] // self.resolution
        return (F.avg_pool2d(image, factor) if factor > 1 else image).contiguous()


class MobileStyleGANGenerator(nn.Module):
    """MobileStyleGAN-FFHQ behind the project's generator interface (see vhuman.generators)."""

    kind = "mobilestylegan"

    def __init__(self, resolution: int = 256, z_dim: int = 512, w_dim: int = 512, mapping_layers: int = 8):
        super().__init__()
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.mapping = MobileMapping(z_dim, w_dim, mapping_layers)
        self.synthesis_network = MobileSynthesis(resolution, w_dim)
        self.num_layers = self.synthesis_network.num_layers
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.requires_grad_(False)

    def synthesis(self, wp: torch.Tensor) -> torch.Tensor:
        return self.synthesis_network(wp)

    @property
    def layer_groups(self) -> list[list[int]]:
        """The codes that work at one scale: the 4×4 conv, each block's up-sampling and two convs, the to-wavelets
        conv. The latent-directions probe moves a group at a time (9 syntheses per direction instead of 23)."""
        last = self.num_layers - 1
        return [[0], *([b, b + 1, b + 2] for b in range(1, last, 3)), [last]]

    @property
    def settings(self) -> dict:
        return {
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "mapping_layers": self.mapping.num_layers,
        }

    def save(self, path: str | Path) -> None:
        save_torch_atomic({"kind": KIND, "settings": self.settings, "generator": self.state_dict()}, path)
