"""LPIPS perceptual distance with a VGG16 backbone (Zhang et al. 2018), weights from local files.

Nothing here downloads: the VGG16 convolution weights come from torchvision's checkpoint file
(``vgg16-397923af.pth``, e.g. in the torch hub cache) and the five linear heads from the
LPIPS v0.1 file ``vgg.pth`` that the ``lpips`` package ships. Tests build it with random
weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from torch import Tensor, nn

from dydis.errors import DataError
from dydis.torchfile import load_torch_file

# VGG16 "features" layers: numbers are conv widths, "M" max-pooling (torchvision's order).
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features
_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS normalises ImageNet-style inputs given in [-1, 1] with these constants.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
HUB_VGG16 = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU(inplace=False)]
            width = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Frozen perceptual distance; ``forward(x, y)`` gives one value per image pair, (b,)."""

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in _WIDTHS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always frozen: no dropout, fixed statistics

    def _taps(self, x: Tensor) -> list[Tensor]:
        taps, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                taps.append(h)
                if i == _TAPS[-1]:
                    break
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # x, y: (b, 3, h, w) in [-1, 1]
        total = 0.0
        for head, fx, fy in zip(self.heads, self._taps(x), self._taps(y)):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total = total + head((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_files(cls, vgg_path: str | Path, heads_path: str | Path) -> "LPIPS":
        """Load torchvision's VGG16 checkpoint and the LPIPS v0.1 ``vgg.pth`` heads."""
        model = cls()
        vgg = _load(vgg_path)
        features = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
        try:
            model.features.load_state_dict(features)
        except RuntimeError as err:
            raise DataError(f"expected torchvision's VGG16 state dict (features.*): {str(err).splitlines()[0]}",
                            vgg_path) from None
        heads = _load(heads_path)
        keys = [f"lin{i}.model.1.weight" for i in range(5)]
        if any(k not in heads for k in keys):
            raise DataError(f"expected the LPIPS v0.1 vgg.pth with keys {keys[0]}..{keys[-1]}", heads_path)
        for head, key in zip(model.heads, keys):
            if heads[key].shape != head.weight.shape:
                raise DataError(f"{key}: expected shape {tuple(head.weight.shape)}, found {tuple(heads[key].shape)}",
                                heads_path)
            head.weight.data.copy_(heads[key])
        return model


def _load(path: str | Path) -> dict:
    weights = load_torch_file(path, "torch state dict")
    if not isinstance(weights, dict):
        raise DataError(f"expected a torch state dict, found a {type(weights).__name__}", path)
    return weights
