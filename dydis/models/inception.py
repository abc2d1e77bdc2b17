"""The FID Inception-v3: 2048-d pool features for the standard FID, weights from a local file.

The standard FID number (Heusel et al. 2017) is defined by one network: the TensorFlow
Inception-v3 graph of 2015-12-05, ported to PyTorch by pytorch-fid as
``pt_inception-2015-12-05-6726825d.pth`` (torch-fidelity and torchmetrics use the same file).
Its layout is Szegedy et al. 2016 ("Rethinking the Inception Architecture for Computer Vision",
Table 1 and Figures 5-7, 10), with the quirks of that TF graph that the port keeps so its
features equal TensorFlow's:

- the average pools inside the A, C and E blocks leave the zero padding out of the mean
  (TF's ``SAME`` average pool), and
- the last E block (``Mixed_7c``) pools its pool branch with a max, not an average.

Images are resized bilinearly to 299x299 and mapped from [0, 1] to [-1, 1], as pytorch-fid
does; torch-fidelity instead emulates TF1's resize, so its FID differs slightly on images that
are not 299x299. Attribute names (``Conv2d_1a_3x3``, ``Mixed_5b``, ``branch5x5_1``, ...) are
the state-dict keys of the weights file and so cannot follow the usual naming.

Nothing here downloads: ``load_fid_inception`` reads the file from a path the user gives or
from the torch hub cache, and says where to get it when it is missing. Tests build the network
with random weights. Why not torch-fidelity or torchmetrics: both import torchvision, and the
only torchvision built for torch 2.13 on PyPI links against CUDA torch, so it fails to import
next to the CPU build the project pins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from dydis.errors import DataError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
# The file also holds the 1008-way ImageNet classifier of the TF graph; FID never uses it.
_CLASSIFIER = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU: the unit every Inception layer is made of."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)  # why: the TF graph's epsilon, not torch's 1e-5

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _row(c_in: int, c_out: int, k: int) -> ConvBN:
    """A 1xk convolution that keeps the size (half of a factorised kxk, paper Figure 6)."""
    return ConvBN(c_in, c_out, (1, k), padding=(0, k // 2))


def _col(c_in: int, c_out: int, k: int) -> ConvBN:
    """A kx1 convolution that keeps the size."""
    return ConvBN(c_in, c_out, (k, 1), padding=(k // 2, 0))


def _avg_pool(x: Tensor) -> Tensor:
    # why: TF's SAME average pool divides by the number of real pixels under the window
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _run(x: Tensor, *layers: nn.Module) -> Tensor:
    """Apply a branch's layers one after the other."""
    for layer in layers:
        x = layer(x)
    return x


class BlockA(nn.Module):
    """35x35 block (cf. paper Figure 5): 1x1, 5x5, double 3x3 and pool branches; 224 + pool_features out."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, 35, 35)
        return torch.cat([
            self.branch1x1(x),
            _run(x, self.branch5x5_1, self.branch5x5_2),
            _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)  # (b, 224 + pool_features, 35, 35)


class ReductionB(nn.Module):
    """35x35 -> 17x17 (paper Figure 10): strided 3x3, strided double 3x3 and max pool; 480 + c_in out."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, 35, 35)
        return torch.cat([
            self.branch3x3(x),
            _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)  # (b, 480 + c_in, 17, 17)


class BlockC(nn.Module):
    """17x17 block (paper Figure 6): 7x7 convolutions factorised into 1x7 and 7x1; 768 out."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _row(c7, c7, 7)
        self.branch7x7_3 = _col(c7, 192, 7)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _col(c7, c7, 7)
        self.branch7x7dbl_3 = _row(c7, c7, 7)
        self.branch7x7dbl_4 = _col(c7, c7, 7)
        self.branch7x7dbl_5 = _row(c7, 192, 7)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:  # (b, 768, 17, 17)
        return torch.cat([
            self.branch1x1(x),
            _run(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _run(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                 self.branch7x7dbl_4, self.branch7x7dbl_5),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)  # (b, 768, 17, 17)


class ReductionD(nn.Module):
    """17x17 -> 8x8: strided 3x3, factorised 7x7 then strided 3x3, and max pool; 512 + c_in out."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _row(192, 192, 7)
        self.branch7x7x3_3 = _col(192, 192, 7)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, 17, 17)
        return torch.cat([
            _run(x, self.branch3x3_1, self.branch3x3_2),
            _run(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)  # (b, 512 + c_in, 8, 8)


class BlockE(nn.Module):
    """8x8 block (paper Figure 7): 3x3 convolutions split into parallel 1x3 and 3x1; 2048 out.

    ``pool`` is the pool branch's pooling: the FID graph averages in ``Mixed_7b`` but takes the
    max in ``Mixed_7c``, and the weights were trained (in TF) with exactly that.
    """

    def __init__(self, c_in: int, *, pool: Callable[[Tensor], Tensor]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _row(384, 384, 3)
        self.branch3x3_2b = _col(384, 384, 3)
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _row(384, 384, 3)
        self.branch3x3dbl_3b = _col(384, 384, 3)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, 8, 8)
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(self.pool(x)),
        ], dim=1)  # (b, 2048, 8, 8)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 up to its global average pool; always frozen and in eval mode.

    ``forward`` takes images (b, 3, h, w) in [0, 1] of any size and returns (b, 2048) features,
    non-negative because they average ReLU outputs. The 1008-way classifier of the weights file
    is not built: FID reads the pool features only.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, pool_features=32)
        self.Mixed_5c = BlockA(256, pool_features=64)
        self.Mixed_5d = BlockA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = BlockC(768, channels_7x7=128)
        self.Mixed_6c = BlockC(768, channels_7x7=160)
        self.Mixed_6d = BlockC(768, channels_7x7=160)
        self.Mixed_6e = BlockC(768, channels_7x7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = BlockE(1280, pool=_avg_pool)
        self.Mixed_7c = BlockE(2048, pool=_max_pool)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        return super().train(False)  # why: batch norm must keep the TF graph's statistics

    def forward(self, x: Tensor) -> Tensor:  # x: (b, 3, h, w) in [0, 1]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # why: the TF graph was trained on [-1, 1] inputs
        x = _run(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)  # (b, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (b, 64, 73, 73)
        x = _run(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)  # (b, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (b, 192, 35, 35)
        x = _run(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a)  # (b, 768, 17, 17)
        x = _run(x, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a)  # (b, 1280, 8, 8)
        x = _run(x, self.Mixed_7b, self.Mixed_7c)  # (b, 2048, 8, 8)
        return reduce(x, "b c h w -> b c", "mean")  # (b, 2048)


def find_fid_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: ``path`` if given, else the torch hub cache's copy.

    Raises ``DataError`` (one line: the expected file, where it was looked for and where to get
    it) when there is none, so a command can check this before its long steps.
    """
    how = f"download {FID_WEIGHTS_URL} (pytorch-fid's FID Inception weights)"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"FID Inception weights file not found; {how} and pass its path", path)
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    if not cached.is_file():
        raise DataError(f"FID needs the Inception weights {FID_WEIGHTS_FILE}: {how} and pass "
                        f"--fid-weights PATH, or put the file in {cached.parent}")
    return cached


def load_fid_inception(path: str | os.PathLike | None = None) -> FIDInceptionV3:
    """The FID Inception with the standard weights, on the CPU, frozen, in eval mode.

    Parameters
    ----------
    path : path, optional
        ``pt_inception-2015-12-05-6726825d.pth``; None looks in the torch hub cache
        (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``).

    Returns
    -------
    FIDInceptionV3
        Maps (b, 3, h, w) images in [0, 1] to (b, 2048) features.

    Raises
    ------
    DataError
        One line naming the file: missing, not a torch state dict, or not the FID Inception
        (how many keys are missing, unexpected or of the wrong shape, with an example of each).
    """
    path = find_fid_weights(path)
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a damaged or foreign file
        raise DataError(f"not a readable torch state dict ({err.__class__.__name__}); "
                        f"expected {FID_WEIGHTS_FILE}", path) from None
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise DataError(f"expected a state dict of tensors ({FID_WEIGHTS_FILE}), "
                        f"found a {type(weights).__name__}", path)
    model = FIDInceptionV3()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()} | _CLASSIFIER
    # why: batch norm's step counter only counts training steps, so a file need not carry it
    optional = {k for k in expected if k.endswith("num_batches_tracked")} | set(_CLASSIFIER)
    problems = _mismatches(weights, expected, optional)
    if problems:
        raise DataError(f"not the FID Inception state dict ({FID_WEIGHTS_FILE}): {problems}", path)
    model.load_state_dict({k: v for k, v in weights.items() if k not in _CLASSIFIER}, strict=False)
    return model


def _mismatches(weights: dict[str, Tensor], expected: dict[str, tuple[int, ...]], optional: set[str]) -> str:
    """What keeps ``weights`` from matching ``expected`` (key -> shape), in one line; "" if nothing."""
    missing = [k for k in expected if k not in weights and k not in optional]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k}: expected {expected[k]}, found {tuple(v.shape)}"
             for k, v in weights.items() if k in expected and tuple(v.shape) != expected[k]]
    parts = [f"{len(items)} {what} (e.g. {items[0]})"
             for what, items in (("keys missing", missing), ("unexpected keys", unexpected),
                                 ("of the wrong shape", wrong)) if items]
    return ", ".join(parts)
