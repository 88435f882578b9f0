"""BiSeNet face parser (ResNet-18 context path, 19 CelebAMask-HQ classes), state-dict compatible with the published
``79999_iter.pth``.

Written from the layer-by-layer specification of the published network. Every convolution is bias-free; BN uses
eps 1e-5. Context-path up-sampling is PyTorch's legacy ``nearest`` (floor indexing) and the three heads are
resized to the input with bilinear ``align_corners=True``; both details change the logits if altered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vhuman.io import CheckpointError, load_torch_file

NUM_CLASSES = 19
INPUT_SIZE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_pool(x):
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        f = self.conv(x)
        return f * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(f))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(_global_pool(feat32))  # broadcasts over feat32's grid
        s32 = self.arm32(feat32) + context
        u32 = self.conv_head32(F.interpolate(s32, size=feat16.shape[2:], mode="nearest"))
        s16 = self.arm16(feat16) + u32
        u16 = self.conv_head16(F.interpolate(s16, size=feat8.shape[2:], mode="nearest"))
        return feat8, u16, u32


class FeatureFusion(nn.Module):
    def __init__(self, cin=256, cout=256):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        f = self.convblk(torch.cat([fsp, fcp], dim=1))
        a = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(f)))))
        return f * a + f


class Head(nn.Module):
    def __init__(self, cin, mid, n_classes):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Returns (main logits, aux logits on the 1/8 context, aux logits on the 1/16 context), each N x 19 x H x W."""

    def __init__(self, n_classes=NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def forward(self, x):
        size = x.shape[2:]
        feat8, u16, u32 = self.cp(x)
        outs = (self.conv_out(self.ffm(feat8, u16)), self.conv_out16(u16), self.conv_out32(u32))
        return tuple(F.interpolate(o, size=size, mode="bilinear", align_corners=True) for o in outs)


def load_bisenet(path: str | Path) -> BiSeNet:
    """Load ``79999_iter.pth`` (a plain state dict, possibly legacy-serialised) strictly, on the CPU."""
    sd = load_torch_file(path, what="BiSeNet checkpoint")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "cp.resnet.conv1.weight" not in {k.removeprefix("module.") for k in sd}:
        raise CheckpointError(
            f"{path}: not a BiSeNet face-parsing checkpoint (no 'cp.resnet.conv1.weight'); "
            "download 79999_iter.pth from face-parsing.PyTorch (see README)"
        )
    sd = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in sd.items()}
    net = BiSeNet(NUM_CLASSES)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:4]
        raise CheckpointError(f"{path}: BiSeNet weights do not fit the network: {' '.join(lines)}") from exc
    return net.eval()


def preprocess(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """RGB uint8 images -> normalised 512x512 batch, as published: PIL bilinear resize, ImageNet mean and std."""
    batch = []
    for img in images:
        resized = np.asarray(Image.fromarray(img).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
        batch.append(torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255.0)
    x = torch.stack(batch)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def parse_faces(net: BiSeNet, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Label maps [N, 512, 512] uint8 from RGB uint8 images (main head, argmax; ties go to the lower class)."""
    logits = net(preprocess(images).to(device))[0]
    return logits.argmax(1).to(torch.uint8).cpu().numpy()
