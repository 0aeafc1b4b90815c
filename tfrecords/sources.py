"""Listing the clips of a dataset in one of the supported source formats.

Each `list_<format>` function reads the dataset's own index files and returns
a `Listing`: the class names (line i of `labels.txt` = class i) and one
`ClipSource` per clip, in a fixed order (the order clips are assigned to
shards, so a re-run lists the same clips in the same order). Listing only
touches index files and directory names; reading the frames happens later in
`load_clip`, where a bad video becomes a recorded failure instead of an error.

Index files that are malformed, or name an unknown class, are errors that
name the file and the line (or JSON entry).

Formats:

- `ssv1`: Something-Something V1 — JPEG frame folders plus a list file with
  lines `folder num_frames label_index` (the TSM/TSN lists) or
  `folder;label text` (the original CSVs), and a class list (one name a line).
- `ssv2`: Something-Something V2 — `<id>.webm` videos, the labels JSON
  (`{"class name": "index"}`) and a split JSON (`[{"id", "template"}, ...]`).
- `kinetics`: videos plus a CSV `label,youtube_id,time_start,time_end,split`.
- `folders`: `root/<class name>/<video file>`, or one such tree per split:
  `root/train/<class name>/...` and `root/validation/<class name>/...`
  (`list_folder_splits`); a flat tree can be split into train and
  validation with `validation_fraction`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable, Sequence

import numpy as np

from selfy_tf import run_dir
from tfrecords import video

logger = logging.getLogger(__name__)

DEFAULT_FRAME_TEMPLATE = "{:05d}.jpg"
DEFAULT_KINETICS_TEMPLATE = "{youtube_id}_{time_start:06d}_{time_end:06d}"


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """One clip to convert.

    Args:
        source: what failures report (a path, or `file:line`).
        media_id: the clip identifier written to `clip/media_id`.
        label_index: the class index.
        kind: `"video"` (a video file) or `"frames"` (a frame folder).
        path: the video file or the frame folder.
        num_frames: for frame folders, how many frames the index announces
            (None: count the files that exist).
    """

    source: str
    media_id: str
    label_index: int
    kind: str
    path: str
    num_frames: int | None = None


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How frames are read and resized (see `selfy tfrecords build --help`)."""

    size: tuple[int, int] | None = None
    resize_short: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    frame_template: str = DEFAULT_FRAME_TEMPLATE
    frame_start: int = 1


@dataclasses.dataclass
class Listing:
    """Class names and clips of one split."""

    labels: list[str]
    clips: list[ClipSource]


def _require_file(path: str | None, flag: str, format_name: str) -> str:
    if not path:
        raise ValueError(f"format {format_name!r} needs `{flag}`.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"`{flag}` not found: {path}")
    return path


def _class_names(
    labels_file: str | None, known_labels: Sequence[str] | None, format_name: str
) -> list[str]:
    if labels_file:
        return run_dir.read_labels(labels_file)
    if known_labels:
        return list(known_labels)
    raise ValueError(
        f"format {format_name!r} needs the class list `--labels` (or an existing "
        "labels.txt in the output directory)."
    )


def list_ssv1(
    list_file: str,
    frames_root: str,
    labels_file: str | None = None,
    known_labels: Sequence[str] | None = None,
) -> Listing:
    """Lists Something-Something V1 clips (frame folders).

    Args:
        list_file: lines `folder num_frames label_index` or `folder;label text`.
        frames_root: directory holding one frame folder per clip.
        labels_file: class names, one per line (`category.txt`); defaults to
            `known_labels`.
        known_labels: class names already in the output's `labels.txt`.

    Raises:
        ValueError: malformed line or unknown label, naming file and line.
    """
    _require_file(list_file, "--list", "ssv1")
    _require_file(frames_root, "--frames-root", "ssv1")
    labels = _class_names(labels_file, known_labels, "ssv1")
    index_of = {name: index for index, name in enumerate(labels)}
    clips = []
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            where = f"{list_file}:{number}"
            if ";" in line:
                folder, _, text = line.partition(";")
                if text not in index_of:
                    raise ValueError(
                        f"{where}: unknown label {text!r}; it is not in the class list "
                        f"({len(labels)} classes)."
                    )
                label_index, num_frames = index_of[text], None
            else:
                parts = line.split()
                if len(parts) != 3:
                    raise ValueError(
                        f"{where}: malformed line {line!r}. Expected "
                        "'folder num_frames label_index' or 'folder;label text'."
                    )
                folder = parts[0]
                try:
                    num_frames, label_index = int(parts[1]), int(parts[2])
                except ValueError:
                    raise ValueError(
                        f"{where}: malformed line {line!r}: num_frames and label_index "
                        "must be integers."
                    ) from None
                if not 0 <= label_index < len(labels):
                    raise ValueError(
                        f"{where}: unknown label index {label_index}. Expected 0 to "
                        f"{len(labels) - 1} ({len(labels)} classes)."
                    )
            path = folder if os.path.isabs(folder) else os.path.join(frames_root, folder)
            clips.append(ClipSource(where, folder, label_index, "frames", path, num_frames))
    return Listing(labels, clips)


def list_ssv2(
    annotations_file: str,
    videos_root: str,
    labels_file: str | None = None,
    known_labels: Sequence[str] | None = None,
) -> Listing:
    """Lists Something-Something V2 clips (`<id>.webm`).

    Args:
        annotations_file: the split JSON, a list of `{"id", "template", ...}`.
        videos_root: directory holding `<id>.webm`.
        labels_file: the labels JSON `{"class name": "index"}`; defaults to
            `known_labels`.
        known_labels: class names already in the output's `labels.txt`.

    Raises:
        ValueError: malformed JSON or entry, or unknown label, naming the file
            and the entry.
    """
    _require_file(annotations_file, "--annotations", "ssv2")
    _require_file(videos_root, "--videos-root", "ssv2")
    if labels_file:
        labels = _read_ssv2_labels(labels_file)
    else:
        labels = _class_names(None, known_labels, "ssv2")
    index_of = {name: index for index, name in enumerate(labels)}
    entries = _load_json(annotations_file)
    if not isinstance(entries, list):
        raise ValueError(f"{annotations_file}: expected a JSON list of clips.")
    clips = []
    for number, entry in enumerate(entries, start=1):
        where = f"{annotations_file}: entry {number}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{where}: malformed entry {entry!r}. Expected an object with 'id'.")
        text = entry.get("template")
        if text is None:
            raise ValueError(
                f"{where} (id {entry['id']}): no 'template' (the class). Test-set lists "
                "without labels cannot be converted."
            )
        text = str(text).replace("[", "").replace("]", "")
        if text not in index_of:
            raise ValueError(
                f"{where} (id {entry['id']}): unknown label {text!r}; it is not in the "
                f"class list ({len(labels)} classes)."
            )
        media_id = str(entry["id"])
        path = os.path.join(videos_root, media_id + ".webm")
        clips.append(ClipSource(f"{where} ({path})", media_id, index_of[text], "video", path))
    return Listing(labels, clips)


def _load_json(path: str):
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: malformed JSON: {error.msg}.") from None


def _read_ssv2_labels(path: str) -> list[str]:
    mapping = _load_json(path)
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a JSON object {{'class name': 'index'}}.")
    by_index: dict[int, str] = {}
    for name, value in mapping.items():
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: class {name!r} has index {value!r}. Expected an integer."
            ) from None
        if index in by_index:
            raise ValueError(f"{path}: index {index} is used by {by_index[index]!r} and {name!r}.")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps.")
    return [by_index[index] for index in range(len(by_index))]


_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def list_kinetics(
    csv_file: str,
    videos_root: str,
    labels_file: str | None = None,
    known_labels: Sequence[str] | None = None,
    video_template: str = DEFAULT_KINETICS_TEMPLATE,
) -> Listing:
    """Lists Kinetics-style clips from a CSV `label,youtube_id,time_start,time_end,split`.

    A clip's video is the first file named `video_template` (any extension)
    found in `videos_root/<label>/` or `videos_root/`; a missing video is a
    conversion failure, not an error.

    Args:
        csv_file: the CSV, with a header naming at least the four first columns.
        videos_root: directory of the videos.
        labels_file: class names, one per line; defaults to `known_labels`,
            then to the sorted labels of the CSV.
        known_labels: class names already in the output's `labels.txt`.
        video_template: file name without extension, a `str.format` template
            over the CSV columns.

    Raises:
        ValueError: missing columns, malformed row or unknown label, naming the
            file and line.
    """
    _require_file(csv_file, "--csv", "kinetics")
    _require_file(videos_root, "--videos-root", "kinetics")
    with open(csv_file, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in _KINETICS_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{csv_file}:1: header {reader.fieldnames} lacks columns {missing}. "
                f"Expected {','.join(_KINETICS_COLUMNS)},split."
            )
        rows = []
        for row in reader:
            number = reader.line_num
            if any(row.get(name) in (None, "") for name in _KINETICS_COLUMNS):
                raise ValueError(f"{csv_file}:{number}: malformed row {row}: empty or missing fields.")
            try:
                row["time_start"] = int(float(row["time_start"]))
                row["time_end"] = int(float(row["time_end"]))
            except ValueError:
                raise ValueError(
                    f"{csv_file}:{number}: time_start/time_end must be numbers. Received: "
                    f"{row['time_start']!r}, {row['time_end']!r}."
                ) from None
            rows.append((number, row))
    if labels_file or known_labels:
        labels = _class_names(labels_file, known_labels, "kinetics")
    else:
        labels = sorted({row["label"] for _, row in rows})
    index_of = {name: index for index, name in enumerate(labels)}
    index_files = _index_videos(videos_root)
    clips = []
    for number, row in rows:
        where = f"{csv_file}:{number}"
        if row["label"] not in index_of:
            raise ValueError(
                f"{where}: unknown label {row['label']!r}; it is not in the class list "
                f"({len(labels)} classes)."
            )
        try:
            stem = video_template.format(**row)
        except (KeyError, ValueError, IndexError) as error:
            raise ValueError(
                f"`--video-template` {video_template!r} cannot be filled from {where}: {error}."
            ) from None
        path = (
            index_files.get((row["label"], stem))
            or index_files.get(("", stem))
            or os.path.join(videos_root, row["label"], stem + ".mp4")
        )
        clips.append(ClipSource(f"{where} ({path})", stem, index_of[row["label"]], "video", path))
    return Listing(labels, clips)


def _index_videos(root: str) -> dict[tuple[str, str], str]:
    """Maps (class folder or "", file stem) to a video path, for root and its subfolders."""
    found: dict[tuple[str, str], str] = {}
    for entry in sorted(os.scandir(root), key=lambda item: item.name):
        if entry.is_dir():
            for child in sorted(os.scandir(entry.path), key=lambda item: item.name):
                if child.is_file():
                    found.setdefault((entry.name, os.path.splitext(child.name)[0]), child.path)
        elif entry.is_file():
            found.setdefault(("", os.path.splitext(entry.name)[0]), entry.path)
    return found


def list_folders(root: str, known_labels: Sequence[str] | None = None) -> Listing:
    """Lists `root/<class name>/<video file>` clips; classes are the sorted subfolders.

    Files whose extension is not a known video extension are skipped (logged).
    With `known_labels` (an existing labels.txt), the classes are those and a
    subfolder that is not one of them is an error.
    """
    _require_file(root, "--root", "folders")
    class_folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not class_folders:
        raise ValueError(f"`--root` {root} has no class subfolders. Expected root/<class>/<video>.")
    labels = list(known_labels) if known_labels else class_folders
    index_of = {name: index for index, name in enumerate(labels)}
    clips, skipped = [], 0
    for name in class_folders:
        if name not in index_of:
            raise ValueError(
                f"{os.path.join(root, name)}: unknown class folder {name!r}; it is not in "
                f"the existing labels.txt ({len(labels)} classes)."
            )
        folder = os.path.join(root, name)
        for file_name in sorted(os.listdir(folder)):
            path = os.path.join(folder, file_name)
            if not os.path.isfile(path):
                continue
            if not file_name.lower().endswith(video.VIDEO_EXTENSIONS):
                skipped += 1
                continue
            media_id = f"{name}/{file_name}"
            clips.append(ClipSource(path, media_id, index_of[name], "video", path))
    if skipped:
        logger.info("%s: skipped %d files that are not videos", root, skipped)
    if not clips:
        raise ValueError(
            f"`--root` {root}: no video files in its class subfolders "
            f"({', '.join(class_folders[:5])}{', ...' if len(class_folders) > 5 else ''}). "
            f"Expected root/<class>/<video> with one of the extensions {', '.join(video.VIDEO_EXTENSIONS)}, "
            f"or root/{FOLDER_SPLITS[0]}/<class>/<video> and root/{FOLDER_SPLITS[1]}/<class>/<video>."
        )
    return Listing(labels, clips)


# Split folders recognised by `list_folder_splits`, in the order they are converted.
FOLDER_SPLITS = ("train", "validation")


def _has_split_folders(root: str) -> bool:
    """True when `root/train` (or `root/validation`) holds class folders, not videos."""
    for split in FOLDER_SPLITS:
        path = os.path.join(root, split)
        if os.path.isdir(path) and any(entry.is_dir() for entry in os.scandir(path)):
            return True
    return False


def _validation_rank(clip: ClipSource) -> str:
    # A hash of the clip's own name: the same file always lands in the same
    # split, whatever else the folder holds or the order it is listed in.
    return hashlib.sha256(clip.media_id.encode("utf-8")).hexdigest()


def split_validation(listing: Listing, validation_fraction: float) -> dict[str, Listing]:
    """Splits one listing into `train` and `validation`, stratified per class.

    In each class of `n` clips, the `round(n * validation_fraction)` clips
    with the lowest hash of their media id go to validation (at least one
    when the class has two clips or more, never all of them).

    Raises:
        ValueError: `validation_fraction` not in (0, 1), or no class with two
            clips or more (no validation clip).
    """
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(
            "`--validation-fraction` must be between 0 and 1 (exclusive), e.g. 0.2. "
            f"Received: {validation_fraction}."
        )
    validation_ids = set()
    for label_index in range(len(listing.labels)):
        members = sorted((clip for clip in listing.clips if clip.label_index == label_index), key=_validation_rank)
        count = round(len(members) * float(validation_fraction))
        count = min(max(count, 1 if len(members) >= 2 else 0), max(len(members) - 1, 0))
        validation_ids.update(clip.media_id for clip in members[:count])
    if not validation_ids:
        raise ValueError(
            f"`--validation-fraction` {validation_fraction} leaves no validation clip: no class has "
            "two videos or more. Add videos, or train without a validation split."
        )
    return {
        "train": Listing(listing.labels, [clip for clip in listing.clips if clip.media_id not in validation_ids]),
        "validation": Listing(listing.labels, [clip for clip in listing.clips if clip.media_id in validation_ids]),
    }


def list_folder_splits(
    root: str,
    known_labels: Sequence[str] | None = None,
    validation_fraction: float | None = None,
    split: str = "train",
) -> dict[str, Listing]:
    """Lists the splits of a folder dataset: `{split name: Listing}`.

    Layouts:

    - `root/train/<class>/<video>` and `root/validation/<class>/<video>`:
      one listing per split folder present; the classes are the sorted class
      folders of all splits, so both splits share one `labels.txt`.
    - `root/<class>/<video>`: the whole tree is `split`, or, with
      `validation_fraction`, a `train` and a `validation` listing
      (`split_validation`).

    Raises:
        ValueError: `validation_fraction` given for a tree that already has
            split folders, or a layout without videos (naming the root).
    """
    _require_file(root, "--root", "folders")
    if not _has_split_folders(root):
        listing = list_folders(root, known_labels)
        if validation_fraction:
            return split_validation(listing, validation_fraction)
        return {split: listing}
    present = [name for name in FOLDER_SPLITS if os.path.isdir(os.path.join(root, name))]
    if validation_fraction:
        raise ValueError(
            f"`--validation-fraction` splits a flat root/<class>/<video> tree, but {root} already "
            f"has split folders ({', '.join(present)}). Drop the flag to convert them as they are."
        )
    if known_labels:
        labels = list(known_labels)
    else:
        labels = sorted(
            {entry.name for name in present for entry in os.scandir(os.path.join(root, name)) if entry.is_dir()}
        )
    return {name: list_folders(os.path.join(root, name), labels) for name in present}


def frame_paths(clip: ClipSource, options: LoadOptions) -> list[str]:
    """The frame files of a frame-folder clip, in time order."""
    template = options.frame_template
    if clip.num_frames is not None:
        count = clip.num_frames
        if options.max_frames is not None:
            count = min(count, options.max_frames)
        return [
            os.path.join(clip.path, template.format(options.frame_start + offset))
            for offset in range(count)
        ]
    paths = []
    while options.max_frames is None or len(paths) < options.max_frames:
        path = os.path.join(clip.path, template.format(options.frame_start + len(paths)))
        if not os.path.isfile(path):
            break
        paths.append(path)
    return paths


def load_clip(clip: ClipSource, options: LoadOptions) -> np.ndarray:
    """Reads a clip's frames as `uint8 [num_frames, height, width, 3]`.

    Raises:
        video.VideoDecodeError: unreadable, corrupt, empty or missing input.
    """
    if clip.kind == "frames":
        if not os.path.isdir(clip.path):
            raise video.VideoDecodeError(f"frame folder not found: {clip.path}")
        paths = frame_paths(clip, options)
        if clip.num_frames == 0 or not paths:
            raise video.VideoDecodeError(
                f"no frames in {clip.path} (template {options.frame_template!r}, "
                f"first index {options.frame_start})"
            )
        return video.read_frame_folder(
            clip.path, paths, size=options.size, resize_short=options.resize_short
        )
    return video.read_video_frames(
        clip.path,
        fps=options.fps,
        max_frames=options.max_frames,
        size=options.size,
        resize_short=options.resize_short,
    )


# Format name -> listing function; the CLI takes its `--format` choices from here.
FORMATS: dict[str, Callable[..., Listing]] = {
    "ssv1": list_ssv1,
    "ssv2": list_ssv2,
    "kinetics": list_kinetics,
    "folders": list_folders,
}
