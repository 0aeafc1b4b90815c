"""A tiny learnable TFRecord dataset for tests, benchmarks and smoke runs.

Class `k` is a clip whose frames are one colour (red, green, blue, yellow,
...) plus Gaussian noise, so a small model learns it in a few dozen steps.
"""

from __future__ import annotations

import numpy as np

__all__ = ["write_color_dataset"]

_COLORS = np.array(
    [[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40], [220, 40, 220], [40, 220, 220]],
    dtype=np.float32,
)
_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")


def _clips(count: int, num_classes: int, num_frames: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % num_classes
        noise = rng.normal(0.0, 30.0, (num_frames, height, width, 3))
        frames = np.clip(_COLORS[label] + noise, 0, 255).astype(np.uint8)
        yield frames, label, f"clip{seed}-{index:05d}"


def write_color_dataset(
    out_dir: str,
    num_classes: int = 4,
    num_train: int = 32,
    num_validation: int = 16,
    num_frames: int = 6,
    height: int = 40,
    width: int = 48,
    num_shards: int = 2,
    seed: int = 0,
) -> str:
    """Writes `train` and `validation` splits of colour clips to `out_dir`.

    Args:
        out_dir: output directory (created).
        num_classes: int in [2, 6], default 4.
        num_train / num_validation: clips per split (0 validation: no split).
        num_frames, height, width: stored clip shape.
        num_shards: shards per split (one per worker at least for
            multi-worker runs).
        seed: noise seed.

    Returns:
        `out_dir`.

    Raises:
        ValueError: `num_classes` outside [2, 6].
    """
    from tfrecords import write_split

    if not 2 <= num_classes <= len(_NAMES):
        raise ValueError(f"`num_classes` must be in [2, {len(_NAMES)}]. Received: num_classes={num_classes}.")
    labels = list(_NAMES[:num_classes])
    write_split(out_dir, "train", _clips(num_train, num_classes, num_frames, height, width, seed), labels, num_shards)
    if num_validation:
        write_split(
            out_dir,
            "validation",
            _clips(num_validation, num_classes, num_frames, height, width, seed + 1),
            labels,
            num_shards,
        )
    return out_dir
