"""Summaries and integrity checks of a converted dataset directory."""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import re

import tensorflow as tf

from selfy_tf import run_dir
from tfrecords import decoder as decoder_lib
from tfrecords import features
from tfrecords import split as split_lib

logger = logging.getLogger(__name__)

_SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")
_MAX_REPORTED_ERRORS = 20


def find_splits(data_dir: str) -> dict[str, list[str]]:
    """`{split: sorted shard paths}` of the shards in `data_dir`."""
    splits: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(data_dir, "*.tfrecord"))):
        match = _SHARD.match(os.path.basename(path))
        if match:
            splits[match["split"]].append(path)
    return dict(splits)


def _check_file(path: str, clip_decoder: decoder_lib.Decoder, labels: list[str]) -> dict:
    """Parses every record of a shard and decodes every frame."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode_all(serialized):
        decoded = clip_decoder.decode(serialized)
        shapes = tf.map_fn(
            lambda data: tf.shape(tf.io.decode_jpeg(data, channels=3)),
            decoded[decoder_lib.ENCODED_FRAMES],
            fn_output_signature=tf.TensorSpec([3], tf.int32),
        )
        return decoded[decoder_lib.LABEL], shapes

    records, errors, per_class = 0, [], collections.Counter()
    iterator = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as error:
            errors.append(f"{path}: after record {records}: unreadable: {error.message}")
            break
        try:
            label, shapes = decode_all(serialized)
            label = int(label)
            if not 0 <= label < max(len(labels), 1) and labels:
                raise ValueError(f"label {label} not in labels.txt ({len(labels)} classes)")
            if len({tuple(shape) for shape in shapes.numpy().tolist()}) != 1:
                raise ValueError("frames of the clip differ in size")
            per_class[label] += 1
        except (tf.errors.OpError, ValueError) as error:
            message = getattr(error, "message", str(error)).splitlines()[0]
            errors.append(f"{path}: record {records}: {message}")
        records += 1
    return {"records": records, "errors": errors, "per_class": per_class}


def inspect_dataset(
    data_dir: str,
    *,
    check: bool = False,
    feature_keys: "features.FeatureKeys | dict | None" = None,
) -> dict:
    """Summarises a dataset directory: classes, splits, counts, frame statistics, a sample.

    Args:
        data_dir: directory written by `selfy tfrecords build` or `write_split`.
        check: parse every record and decode every frame of every shard, and
            compare the counts to the manifests.
        feature_keys: SequenceExample keys (see `tfrecords.features.FeatureKeys`).

    Returns:
        A JSON-serialisable dict. With `check`, `"ok"` says whether every
        record parsed and every count matched; `"errors"` lists what did not.

    Raises:
        FileNotFoundError: `data_dir` does not exist or holds no shard.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset directory not found: {data_dir}")
    splits = find_splits(data_dir)
    if not splits:
        raise FileNotFoundError(
            f"no '<split>-00000-of-000NN.tfrecord' shards in {data_dir}"
        )
    labels = run_dir.read_labels(data_dir) if os.path.exists(split_lib.labels_path(data_dir)) else []
    clip_decoder = decoder_lib.Decoder(feature_keys)
    summary: dict = {"data_dir": data_dir, "num_classes": len(labels), "labels": labels, "splits": {}}
    all_errors: list[str] = []
    for split, paths in splits.items():
        info: dict = {"files": len(paths)}
        expected_count = int(_SHARD.match(os.path.basename(paths[0]))["count"])
        if len(paths) != expected_count:
            message = f"split {split!r}: {len(paths)} shard files, names say {expected_count}"
            info["warning"] = message
            all_errors.append(message)
        manifest_path = split_lib.manifest_path(data_dir, split)
        manifest = None
        if os.path.exists(manifest_path):
            with open(manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
            for key in ("listed", "converted", "failed", "frames", "height", "width", "per_class"):
                if key in manifest:
                    info[key] = manifest[key]
        info["sample"] = _sample(paths[0], clip_decoder, labels)
        if check:
            per_class: collections.Counter = collections.Counter()
            records = 0
            for path in paths:
                result = _check_file(path, clip_decoder, labels)
                records += result["records"]
                per_class.update(result["per_class"])
                all_errors.extend(result["errors"])
            info["records"] = records
            if manifest is not None and manifest.get("converted") != records:
                all_errors.append(
                    f"split {split!r}: {records} records, manifest says converted="
                    f"{manifest.get('converted')}"
                )
            if manifest is not None and labels and "per_class" in manifest:
                counted = {name: per_class.get(index, 0) for index, name in enumerate(labels)}
                if counted != manifest["per_class"]:
                    all_errors.append(f"split {split!r}: per-class counts differ from the manifest")
        summary["splits"][split] = info
    if check:
        summary["ok"] = not all_errors
        summary["errors"] = all_errors[:_MAX_REPORTED_ERRORS]
        summary["num_errors"] = len(all_errors)
    return summary


def _sample(path: str, clip_decoder: decoder_lib.Decoder, labels: list[str]) -> dict:
    """Decodes the first record of a shard."""
    for serialized in tf.data.TFRecordDataset(path).take(1):
        decoded = clip_decoder.decode(serialized)
        encoded = decoded[decoder_lib.ENCODED_FRAMES]
        first = tf.io.decode_jpeg(encoded[0], channels=3)
        label = int(decoded[decoder_lib.LABEL])
        return {
            "file": os.path.basename(path),
            "media_id": decoded[decoder_lib.MEDIA_ID].numpy().decode("utf-8", "replace"),
            "label": label,
            "label_text": labels[label] if 0 <= label < len(labels) else "",
            "num_frames": int(tf.size(encoded)),
            "frame_shape": [int(value) for value in first.shape],
        }
    return {"file": os.path.basename(path), "empty": True}
