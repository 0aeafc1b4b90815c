"""`open_split`: one split of a converted dataset, as the trainer and evaluator read it.

A dataset directory written by `selfy tfrecords build` holds, per split,
`<split>-*.tfrecord` shards and `<split>.manifest.json` (counts and frame
statistics, see `tfrecords.writer`), plus one `labels.txt` for all splits.
This module is the only reader of that layout.

Example:

```python
from tfrecords import open_split
split = open_split("data", "validation")
print(split.num_examples, split.labels, split.frames["max"])
```
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from selfy_tf import run_dir


def shard_pattern(data_dir: str, split: str) -> str:
    """The glob of a split's shards: `DIR/<split>-*.tfrecord`."""
    return os.path.join(data_dir, f"{split}-*.tfrecord")


def manifest_path(data_dir: str, split: str) -> str:
    """Where a split's manifest lives: `DIR/<split>.manifest.json`."""
    return os.path.join(data_dir, f"{split}.manifest.json")


def labels_path(data_dir: str) -> str:
    """The dataset's class names: `DIR/labels.txt`."""
    return os.path.join(data_dir, run_dir.LABELS_FILE)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a converted dataset.

    Attributes:
        data_dir: the dataset directory.
        name: the split name, e.g. "train".
        files: its shard files, sorted (empty when the split is absent).
        num_examples: clips in the shards (the manifest's count, else counted).
        labels: the dataset's class names.
        manifest: the parsed `<split>.manifest.json`, or None.
    """

    data_dir: str
    name: str
    files: list[str]
    num_examples: int
    labels: list[str]
    manifest: dict[str, Any] | None

    @property
    def frames(self) -> dict[str, Any]:
        """Frames per clip from the manifest: `min`, `max`, `mean`, `total` (empty if unknown)."""
        return dict((self.manifest or {}).get("frames") or {})


def _count_records(files: list[str]) -> int:
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(files)
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def _manifest_counts(directory: str) -> dict[str, int]:
    """`{shard file name: clips}` from every split manifest in `directory`."""
    import glob

    counts = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.manifest.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, json.JSONDecodeError):
            continue
        for shard in manifest.get("shards") or []:
            if isinstance(shard, dict) and "file" in shard and "clips" in shard:
                counts[str(shard["file"])] = int(shard["clips"])
    return counts


def shard_record_counts(files: list[str]) -> list[int]:
    """Clips in each shard file: from the split manifests beside the shards,
    else counted by reading the shard once.

    Args:
        files: shard paths (any directories).

    Returns:
        One count per file, in order.
    """
    manifests: dict[str, dict[str, int]] = {}
    counts = []
    for path in files:
        directory, name = os.path.split(os.fspath(path))
        if directory not in manifests:
            manifests[directory] = _manifest_counts(directory or ".")
        count = manifests[directory].get(name)
        counts.append(_count_records([path]) if count is None else count)
    return counts


def open_split(data_dir: str, split: str, *, required: bool = True) -> Split:
    """Opens one split of a converted dataset.

    Args:
        data_dir: the dataset directory.
        split: split name ("train", "validation", ...).
        required: raise when the split has no shards; otherwise return an
            empty split.

    Returns:
        A `Split`.

    Raises:
        FileNotFoundError: no such directory, or no `labels.txt`.
        ValueError: no shards for a required split (naming the pattern), or a
            manifest that is not JSON (naming the file).
    """
    import glob

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data directory not found: {data_dir}")
    labels = run_dir.read_labels(data_dir)
    pattern = shard_pattern(data_dir, split)
    files = sorted(glob.glob(pattern))
    if required and not files:
        raise ValueError(
            f"No {split!r} clips in {data_dir}: nothing matches {pattern!r}. Convert videos "
            f"with `selfy tfrecords build --split {split}`, or pick another split."
        )
    manifest = None
    path = manifest_path(data_dir, split)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            try:
                manifest = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not a valid manifest ({error}).") from error
    num_examples = 0
    if files:
        if manifest is not None and "converted" in manifest:
            num_examples = int(manifest["converted"])
        else:
            num_examples = _count_records(files)
    return Split(data_dir, split, files, num_examples, labels, manifest)


__all__ = [
    "Split",
    "labels_path",
    "manifest_path",
    "open_split",
    "shard_pattern",
    "shard_record_counts",
]
