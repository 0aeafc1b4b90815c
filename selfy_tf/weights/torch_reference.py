"""A plain-PyTorch reference of the TSN / TSM / SELFYNet ResNets (DESIGN.md §2–§4).

Used to check conversions: its state dict has the official key layout
(`module.base_model.*`, `module.new_fc.*`), it reproduces the official
release's logits on the parity fixture, and it runs the ResNet-50 bottleneck
path for which no official fixture exists. `selfy convert-weights` runs it
next to the converted Keras model to report the logits difference. The
benchmarks time it as the official baseline (`stss_method="all_pairs"`).

Importing this module imports torch: import it only where torch is wanted.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_DEPTHS = {
    "r18": ("basic", (2, 2, 2, 2)),
    "r34": ("basic", (3, 4, 6, 3)),
    "r50": ("bottleneck", (3, 4, 6, 3)),
    "r101": ("bottleneck", (3, 4, 23, 3)),
}


def temporal_shift(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """TSM zero-padded shift on `[N*T, C, H, W]`: c=C//8 from the next frame, c from the previous."""
    batch_frames, channels, height, width = x.shape
    clips = x.reshape(batch_frames // num_frames, num_frames, channels, height, width)
    fold = channels // 8
    out = torch.zeros_like(clips)
    out[:, :-1, :fold] = clips[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = clips[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = clips[:, :, 2 * fold :]
    return out.reshape(x.shape)


def stss_reference(features: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """STSS by the definition: `[B, T, C, H, W]` → `[B, T, H, W, L, U, V]`, zero outside."""
    length, rows, cols = window
    normalized = features / torch.sqrt((features**2).sum(dim=2, keepdim=True) + 1e-6)
    batch, frames, channels, height, width = normalized.shape
    padded = F.pad(
        normalized, (cols // 2, cols // 2, rows // 2, rows // 2, 0, 0, length // 2, length // 2)
    )
    out = normalized.new_zeros(batch, frames, height, width, length, rows, cols)
    for l in range(length):
        for u in range(rows):
            for v in range(cols):
                other = padded[:, l : l + frames, :, u : u + height, v : v + width]
                out[..., l, u, v] = (normalized * other).sum(dim=2)
    return out


@functools.lru_cache(maxsize=8)
def _window_keys(height: int, width: int, rows: int, cols: int) -> torch.Tensor:
    """For each query position and (u, v) offset: the flat key position, or -1 outside the map.

    Returns an int64 tensor `[height * width, rows * cols]`.
    """
    y, x, u, v = np.meshgrid(np.arange(height), np.arange(width), np.arange(rows), np.arange(cols), indexing="ij")
    key_y, key_x = y + u - rows // 2, x + v - cols // 2
    inside = (key_y >= 0) & (key_y < height) & (key_x >= 0) & (key_x < width)
    return torch.from_numpy(np.where(inside, key_y * width + key_x, -1).reshape(height * width, rows * cols))


def stss_all_pairs(features: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """STSS as the official release computes it in plain PyTorch: all pairs, then the window.

    The official `STSSTransformation` without its compiled correlation
    sampler pairs every frame with each of its `L` temporal neighbours (zero
    frames outside the clip), correlates all query positions with all key
    positions of the pair in one batched matrix product, and reads each
    query's `(U, V)` window out of that `[H*W, H*W]` matrix. This does the
    same (the read-out is one gather here); it equals `stss_reference` to
    float32 rounding and is the fastest of the official ways on a CPU
    (benchmarks/README.md, "PyTorch baseline of the STSS and the block").

    Args:
        features: `[B, T, C, H, W]`.
        window: `(L, U, V)`, odd.

    Returns:
        `[B, T, H, W, L, U, V]`, zero where the displaced position is outside.
    """
    length, rows, cols = window
    batch, frames, channels, height, width = features.shape
    norm = torch.sqrt(features.float().square().sum(dim=2, keepdim=True) + 1e-6)
    normalized = features / norm.to(features.dtype)
    padded = F.pad(normalized, (0, 0, 0, 0, 0, 0, length // 2, length // 2))
    neighbours = torch.stack([padded[:, l : l + frames] for l in range(length)], dim=2)
    queries = normalized.flatten(3)  # [B, T, C, HW]
    keys = neighbours.flatten(4)  # [B, T, L, C, HW]
    similarity = torch.einsum("btcn,btlcm->btlnm", queries, keys)  # [B, T, L, HW, HW]
    window_keys = _window_keys(height, width, rows, cols).to(features.device)
    picked = torch.gather(
        similarity, 4, window_keys.clamp(min=0).expand(batch, frames, length, *window_keys.shape)
    )
    picked = picked * (window_keys >= 0).to(picked.dtype)
    picked = picked.reshape(batch, frames, length, height, width, rows, cols)
    return picked.permute(0, 1, 3, 4, 2, 5, 6)


# How `SELFYBlockReference` computes the STSS: by the definition (the
# default, a plain loop over the window, for conversion checks) or the
# official release's all-pairs path (for timing).
STSS_METHODS = {"definition": stss_reference, "all_pairs": stss_all_pairs}


def _conv_bn(in_channels: int, out_channels: int, kernel: Any, stride: Any, padding: Any, three_d: bool):
    conv = (nn.Conv3d if three_d else nn.Conv2d)(
        in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False
    )
    bn = (nn.BatchNorm3d if three_d else nn.BatchNorm2d)(out_channels)
    return conv, bn


class _STSSTransformation(nn.Module):
    def __init__(
        self, in_channels: int, hidden_channels: int, num_frames: int, window: Sequence[int], stss_method: str
    ):
        super().__init__()
        if stss_method not in STSS_METHODS:
            raise ValueError(
                f"`stss_method` must be one of {sorted(STSS_METHODS)}. Received: stss_method={stss_method!r}."
            )
        self.num_frames = num_frames
        self.window = tuple(window)
        self.stss = STSS_METHODS[stss_method]
        conv, bn = _conv_bn(in_channels, hidden_channels, 3, 2, 1, three_d=False)
        self.downsample = nn.Sequential(conv, bn, nn.ReLU())

    def forward(self, x):
        x = self.downsample(x)
        batch_frames, channels, height, width = x.shape
        clips = x.reshape(batch_frames // self.num_frames, self.num_frames, channels, height, width)
        return self.stss(clips, self.window)


class _STSSExtraction(nn.Module):
    def __init__(self, channels: Sequence[int]):
        super().__init__()
        inputs = (1, *channels[:3])
        strides = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 1, 1))
        paddings = ((0, 1, 1), (0, 1, 1), (0, 1, 1), (0, 0, 0))
        for index in range(4):
            conv, bn = _conv_bn(inputs[index], channels[index], (1, 3, 3), strides[index], paddings[index], True)
            setattr(self, f"conv{index}", nn.Sequential(conv, bn, nn.ReLU()))

    def forward(self, similarity):
        batch, frames, height, width, length, rows, cols = similarity.shape
        x = similarity.reshape(batch * frames * height * width, 1, length, rows, cols)
        for index in range(4):
            x = getattr(self, f"conv{index}")(x)
        # [(b t h w), c, L, 1, 1] -> [(b L), c, t, h, w]
        channels = x.shape[1]
        x = x.reshape(batch, frames, height, width, channels, length)
        return x.permute(0, 5, 4, 1, 2, 3).reshape(batch * length, channels, frames, height, width), length


class _STSSIntegration(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], length: int):
        super().__init__()
        inputs = (in_channels, channels[0], channels[1])
        for index in range(3):
            conv, bn = _conv_bn(inputs[index], channels[index], (1, 3, 3), 1, (0, 1, 1), True)
            setattr(self, f"conv{index}", nn.Sequential(conv, bn, nn.ReLU()))
        conv, bn = _conv_bn(channels[2] * length, channels[3], (1, 3, 3), 1, (0, 1, 1), True)
        # Index 0 of the official Sequential is a parameter-free rearrangement.
        self.conv3_fuse = nn.Sequential(nn.Identity(), conv, bn, nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose3d(
                channels[3], out_channels, 1, stride=(1, 2, 2), output_padding=(0, 1, 1), bias=False
            ),
            nn.BatchNorm3d(out_channels),
        )

    def forward(self, x, length: int):
        for index in range(3):
            x = getattr(self, f"conv{index}")(x)
        batch_length, channels, frames, height, width = x.shape
        # [(b L), c, t, h, w] -> [b, (L c), t, h, w], channel index l * c + c'.
        x = x.reshape(batch_length // length, length * channels, frames, height, width)
        x = self.conv3_fuse(x)
        x = self.upsample(x)
        batch, channels, frames, height, width = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)


class SELFYBlockReference(nn.Module):
    """The SELFY block of DESIGN.md §3 with the official module names.

    `stss_method` is a key of `STSS_METHODS`: `"definition"` (default,
    `stss_reference`) or `"all_pairs"` (`stss_all_pairs`, the official
    release's plain-PyTorch path, much faster); the weights are the same.
    """

    def __init__(
        self,
        in_channels: int,
        num_frames: int,
        hidden_channels: int = 128,
        window: Sequence[int] = (5, 9, 9),
        extraction_channels: Sequence[int] = (4, 16, 64, 64),
        integration_channels: Sequence[int] = (64, 64, 64, 64),
        stss_method: str = "definition",
    ):
        super().__init__()
        self.stss_transformation = _STSSTransformation(
            in_channels, hidden_channels, num_frames, window, stss_method
        )
        self.stss_extraction = _STSSExtraction(extraction_channels)
        self.stss_integration = _STSSIntegration(
            extraction_channels[3], in_channels, integration_channels, window[0]
        )

    def forward(self, x):
        similarity = self.stss_transformation(x)
        features, length = self.stss_extraction(similarity)
        return F.relu(x + self.stss_integration(features, length))


class _Block(nn.Module):
    def __init__(self, kind: str, in_channels: int, planes: int, stride: int, num_frames: int, shift: bool):
        super().__init__()
        self.kind, self.num_frames, self.shift = kind, num_frames, shift
        expansion = 4 if kind == "bottleneck" else 1
        if kind == "basic":
            self.conv1, self.bn1 = _conv_bn(in_channels, planes, 3, stride, 1, False)
            self.conv2, self.bn2 = _conv_bn(planes, planes, 3, 1, 1, False)
        else:
            self.conv1, self.bn1 = _conv_bn(in_channels, planes, 1, 1, 0, False)
            self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride, 1, False)
            self.conv3, self.bn3 = _conv_bn(planes, planes * expansion, 1, 1, 0, False)
        self.downsample = None
        if stride != 1 or in_channels != planes * expansion:
            conv, bn = _conv_bn(in_channels, planes * expansion, 1, stride, 0, False)
            self.downsample = nn.Sequential(conv, bn)

    def forward(self, x):
        out = temporal_shift(x, self.num_frames) if self.shift else x
        out = F.relu(self.bn1(self.conv1(out)))
        if self.kind == "basic":
            out = self.bn2(self.conv2(out))
        else:
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


# The stage after which a SELFY block sits (`selfy_stage`): res2 is `layer1`.
_SELFY_STAGES = {"res2": 0, "res3": 1, "res4": 2}


class _Backbone(nn.Module):
    def __init__(
        self,
        depth: str,
        widths: Sequence[int],
        num_frames: int,
        shift: bool,
        selfy_args: Mapping[str, Any] | None,
        selfy_stage: str = "res3",
    ):
        super().__init__()
        if selfy_stage not in _SELFY_STAGES:
            raise ValueError(
                f"`selfy_stage` must be one of {sorted(_SELFY_STAGES)}. Received: selfy_stage={selfy_stage!r}."
            )
        self.selfy_after = _SELFY_STAGES[selfy_stage]
        kind, layers = _DEPTHS[depth]
        expansion = 4 if kind == "bottleneck" else 1
        stem, *planes = widths
        self.conv1, self.bn1 = _conv_bn(3, stem, 7, 2, 3, False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        for stage, num_blocks in enumerate(layers):
            blocks = []
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_Block(kind, in_channels, planes[stage], stride, num_frames, shift))
                in_channels = planes[stage] * expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            if stage == self.selfy_after and selfy_args is not None:
                self.selfy = SELFYBlockReference(in_channels, num_frames, **selfy_args)
        self.has_selfy = selfy_args is not None
        self.out_channels = in_channels

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
            if self.has_selfy and stage == self.selfy_after:
                x = self.selfy(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class VideoResNetReference(nn.Module):
    """TSN / TSM / SELFYNet ResNet in PyTorch, official state-dict layout after `.module`.

    Args:
        depth: "r18", "r34", "r50" or "r101".
        num_classes: classifier outputs.
        num_frames: frames per clip.
        shift: TSM shift at the start of every residual branch.
        selfy_args: SELFY block arguments, or None.
        widths: stem width then the four stage widths (planes).
        selfy_stage: the stage the SELFY block follows: "res3" (`layer2`,
            the reference), "res2" or "res4".
    """

    def __init__(
        self,
        depth: str,
        num_classes: int,
        num_frames: int,
        shift: bool = True,
        selfy_args: Mapping[str, Any] | None = None,
        widths: Sequence[int] = (64, 64, 128, 256, 512),
        selfy_stage: str = "res3",
    ):
        super().__init__()
        self.num_frames = num_frames
        self.base_model = _Backbone(depth, widths, num_frames, shift, selfy_args, selfy_stage)
        self.new_fc = nn.Conv1d(self.base_model.out_channels, num_classes, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`frames` `[B, T, H, W, 3]` RGB 0..255 → logits `[B, num_classes]`."""
        x = self.preprocess(frames)
        features = self.base_model(x)
        logits = self.new_fc(features[:, :, None])[:, :, 0]
        return logits.reshape(-1, self.num_frames, logits.shape[-1]).mean(dim=1)

    @staticmethod
    def preprocess(frames: torch.Tensor) -> torch.Tensor:
        """`[B, T, H, W, 3]` 0..255 → normalised `[B*T, 3, H, W]`, float32 (float64
        for float64 frames, as a float64 model takes them)."""
        x = frames.to(torch.float64 if frames.dtype == torch.float64 else torch.float32) / 255.0
        mean = torch.tensor(_MEAN, dtype=x.dtype, device=x.device)
        x = (x - mean) / torch.tensor(_STD, dtype=x.dtype, device=x.device)
        batch, frames_count, height, width, channels = x.shape
        return x.reshape(batch * frames_count, height, width, channels).permute(0, 3, 1, 2)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with official keys (`module.base_model.*`, `module.new_fc.*`)."""
        return {f"module.{key}": value for key, value in self.state_dict().items()}


def build_reference(
    name: str,
    num_classes: int,
    num_frames: int,
    width_multiplier: float = 1.0,
    selfy_channels: Any = None,
    stss_method: str = "definition",
    selfy_stage: str = "res3",
) -> VideoResNetReference:
    """The reference for a zoo model name and width settings (as `create_model` uses them).

    `stss_method` chooses how a SELFY block computes the STSS (`STSS_METHODS`);
    `selfy_stage` the stage it follows.
    """
    from selfy_tf.models.tsm_resnet import _scaled, resolve_selfy_channels

    variant, depth = name.rsplit("_", 1)
    widths = tuple(_scaled(width, float(width_multiplier)) for width in (64, 64, 128, 256, 512))
    selfy_args = None
    if variant == "selfy_tsm":
        selfy_args = dict(resolve_selfy_channels(selfy_channels), stss_method=stss_method)
    return VideoResNetReference(
        depth,
        num_classes,
        num_frames,
        shift=variant != "tsn",
        selfy_args=selfy_args,
        widths=widths,
        selfy_stage=selfy_stage,
    )


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Random BN affine parameters and statistics, so that eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                size = module.num_features
                module.weight.copy_(0.5 + 0.5 * torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.75 + 0.5 * torch.rand(size, generator=generator))


def run_reference(model: VideoResNetReference, frames: np.ndarray) -> np.ndarray:
    """Eval-mode logits of the reference for numpy `frames` `[B, T, H, W, 3]`."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(frames, np.float32))).numpy()
