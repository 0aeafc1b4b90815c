"""`selfy tfrecords build|inspect` on tiny datasets of all four source formats."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import operator
import os
import re
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from selfy_cli.main import main
from selfy_tf import run_dir
from tfrecords import decoder as decoder_lib
from tfrecords import sources, video, writer
from tfrecords import split as split_lib

HEIGHT, WIDTH = 48, 64
CLASSES = ["Pushing something from left to right", "Pulling something", "Holding something"]
# `folders` classes are the sorted subfolder names.
FOLDER_CLASSES = sorted(CLASSES[:2])


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """These tests touch no Keras state: skip the shared per-test Keras reset (slow)."""
    yield


def _frames(clip_number: int, num_frames: int) -> np.ndarray:
    """Smooth frames (compress well): a gradient whose level encodes clip and frame."""
    rows = np.linspace(0, 60, HEIGHT)[:, None]
    columns = np.linspace(0, 60, WIDTH)[None, :]
    frames = []
    for index in range(num_frames):
        level = 20 + 12 * index + 5 * clip_number
        channels = [rows + columns + level, rows + level, columns + level]
        image = np.stack([np.broadcast_to(c, (HEIGHT, WIDTH)) for c in channels], axis=-1)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _write_video(path: str, frames: np.ndarray, codec: str = "mpeg4") -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_zero_frame_video(path: str) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()


def _read_records(data_dir: str, split: str) -> list[dict]:
    records = []
    clip_decoder = decoder_lib.Decoder()
    paths = sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
    for serialized in tf.data.TFRecordDataset(paths):
        decoded = clip_decoder.decode(serialized)
        records.append(
            {
                "media_id": decoded["media_id"].numpy().decode(),
                "label": int(decoded["label"]),
                "label_text": decoded["label_text"].numpy().decode(),
                "frames": np.stack(
                    [tf.io.decode_jpeg(data).numpy() for data in decoded["encoded_frames"]]
                ),
            }
        )
    return records


def _build(*argv: str) -> int:
    return main(["tfrecords", "build", "--no-progress", "--workers", "1", *argv])


def _manifest(out_dir: str, split: str = "train") -> dict:
    with open(os.path.join(out_dir, f"{split}.manifest.json")) as handle:
        return json.load(handle)


def _assert_round_trip(records, expected: dict, labels=CLASSES, tolerance=4.0):
    """Each expected clip exactly once, right label, frames close to the source frames."""
    assert sorted(record["media_id"] for record in records) == sorted(expected)
    for record in records:
        source_frames, label = expected[record["media_id"]]
        assert record["label"] == label
        assert record["label_text"] == labels[label]
        assert record["frames"].shape == source_frames.shape
        error = np.abs(record["frames"].astype(float) - source_frames.astype(float)).mean()
        assert error < tolerance, (record["media_id"], error)


@pytest.fixture(scope="module")
def folders_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    expected = {}
    number = 0
    for label, name in enumerate(FOLDER_CLASSES):
        os.makedirs(root / name)
        for clip in range(2):
            frames = _frames(number, 3 + clip)
            _write_video(str(root / name / f"clip{clip}.mp4"), frames)
            expected[f"{name}/clip{clip}.mp4"] = (frames, label)
            number += 1
    bad = root / FOLDER_CLASSES[1]
    (bad / "corrupt.mp4").write_bytes(b"this is not a video" * 50)
    _write_zero_frame_video(str(bad / "zero.avi"))
    _write_video(str(bad / "full.avi"), _frames(9, 20))
    data = (bad / "full.avi").read_bytes()
    (bad / "truncated.avi").write_bytes(data[: len(data) // 2])
    os.remove(bad / "full.avi")
    (bad / "notes.txt").write_text("not a video, skipped")
    return str(root), expected


class TestFolders:
    def test_round_trip_and_failures(self, folders_root, tmp_path):
        root, expected = folders_root
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", root, "--out", out, "--shards", "3") == 0
        manifest = _manifest(out)
        assert manifest["listed"] == 7
        assert manifest["converted"] == 4 and manifest["failed"] == 3
        reasons = {os.path.basename(item["source"]): item["reason"] for item in manifest["failures"]}
        assert set(reasons) == {"corrupt.mp4", "zero.avi", "truncated.avi"}
        assert "cannot decode" in reasons["corrupt.mp4"]
        assert "no frames" in reasons["zero.avi"] or "no video stream" in reasons["zero.avi"]
        assert re.search("truncated|cannot decode", reasons["truncated.avi"])
        assert manifest["per_class"] == {FOLDER_CLASSES[0]: 2, FOLDER_CLASSES[1]: 2}
        assert manifest["frames"]["min"] == 3 and manifest["frames"]["max"] == 4
        assert run_dir.read_labels(out) == FOLDER_CLASSES
        _assert_round_trip(_read_records(out, "train"), expected, labels=FOLDER_CLASSES)
        # Video frames went through the mpeg4 codec: compare with what PyAV decodes too.
        for record in _read_records(out, "train"):
            decoded = video.read_video_frames(os.path.join(root, record["media_id"]))
            assert np.abs(record["frames"].astype(float) - decoded).mean() < 1.5

    def test_nothing_converted_exits_1(self, tmp_path):
        os.makedirs(tmp_path / "root" / "a")
        (tmp_path / "root" / "a" / "broken.mp4").write_bytes(b"\0" * 100)
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", str(tmp_path / "root"), "--out", out) == 1
        assert _manifest(out)["failed"] == 1

    def test_no_validation_warning_names_the_split_folders(self, folders_root, tmp_path, capsys):
        root, _ = folders_root
        # A root typed with its trailing separator, as shells complete it.
        assert _build("--format", "folders", "--root", root + os.sep, "--out", str(tmp_path / "out")) == 0
        error = capsys.readouterr().err
        train_folder = os.path.join(root, "train", "<class>", "")
        validation_folder = os.path.join(root, "validation", "<class>", "")
        assert f"or put the videos in {train_folder} and {validation_folder}." in error
        assert os.sep * 2 not in error

    def test_resize_options(self, folders_root, tmp_path):
        root, _ = folders_root
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", root, "--out", out, "--size", "24x40",
                      "--max-frames", "2") == 0
        records = _read_records(out, "train")
        assert {record["frames"].shape for record in records} == {(2, 24, 40, 3)}


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    """`root/train/<class>/` (2 clips per class) and `root/validation/<class>/` (1 per class)."""
    root = tmp_path_factory.mktemp("split_folders")
    number = 0
    for split, count in (("train", 2), ("validation", 1)):
        for name in FOLDER_CLASSES:
            os.makedirs(root / split / name)
            for clip in range(count):
                _write_video(str(root / split / name / f"{split}{clip}.mp4"), _frames(number, 3))
                number += 1
    return str(root)


class TestFolderSplits:
    def test_train_and_validation_folders_give_both_splits(self, split_root, tmp_path, capsys):
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", split_root, "--out", out) == 0
        summaries = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [(item["split"], item["converted"]) for item in summaries] == [("train", 4), ("validation", 2)]
        assert run_dir.read_labels(out) == FOLDER_CLASSES
        assert _manifest(out, "validation")["per_class"] == {name: 1 for name in FOLDER_CLASSES}
        validation = _read_records(out, "validation")
        assert sorted((record["media_id"], record["label"]) for record in validation) == [
            (f"{name}/validation0.mp4", label) for label, name in enumerate(FOLDER_CLASSES)
        ]
        # `--split` picks one of them.
        other = str(tmp_path / "other")
        assert _build("--format", "folders", "--root", split_root, "--out", other, "--split", "validation") == 0
        assert [name for name in os.listdir(other) if name.endswith(".tfrecord")] == [
            "validation-00000-of-00001.tfrecord"
        ]

    def test_validation_fraction_is_stratified_and_deterministic(self, tmp_path):
        root = tmp_path / "flat"
        sizes = {"a": 10, "b": 5, "c": 2, "d": 1}
        for name, count in sizes.items():
            os.makedirs(root / name)
            for index in range(count):
                (root / name / f"v{index}.mp4").write_bytes(b"x")
        listing = sources.list_folders(str(root))
        splits = sources.split_validation(listing, 0.2)
        per_class = {
            split: {name: sum(clip.label_index == label for clip in item.clips) for label, name in enumerate("abcd")}
            for split, item in splits.items()
        }
        # round(n * 0.2), at least one for two clips or more, never the whole class.
        assert per_class["validation"] == {"a": 2, "b": 1, "c": 1, "d": 0}
        assert {name: per_class["train"][name] + per_class["validation"][name] for name in sizes} == sizes
        # Deterministic per file: another listing order, or more files in a
        # class, keeps the files that were in validation there (class a).
        shuffled = sources.Listing(listing.labels, listing.clips[::-1])
        validation_ids = {clip.media_id for clip in splits["validation"].clips}
        assert {clip.media_id for clip in sources.split_validation(shuffled, 0.2)["validation"].clips} == validation_ids
        for index in range(10, 15):
            (root / "a" / f"v{index}.mp4").write_bytes(b"x")
        grown = sources.split_validation(sources.list_folders(str(root)), 0.2)["validation"].clips
        assert {clip.media_id for clip in splits["validation"].clips if clip.label_index == 0} <= {
            clip.media_id for clip in grown
        }

    def test_validation_fraction_through_the_cli(self, folders_root, tmp_path, capsys):
        root, _ = folders_root
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", root, "--out", out, "--validation-fraction", "0.5") == 0
        summaries = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [item["split"] for item in summaries] == ["train", "validation"]
        assert sum(item["listed"] for item in summaries) == 7
        train_ids = {record["media_id"] for record in _read_records(out, "train")}
        validation_ids = {record["media_id"] for record in _read_records(out, "validation")}
        assert train_ids and validation_ids and not train_ids & validation_ids

    def test_layout_errors(self, split_root, tmp_path, capsys):
        empty = tmp_path / "empty"
        os.makedirs(empty / "train")
        os.makedirs(empty / "validation")
        out = str(tmp_path / "out")
        assert main(["tfrecords", "build", "--format", "folders", "--root", str(empty), "--out", out]) == 1
        error = capsys.readouterr().err
        assert "no video files in its class subfolders" in error and "index files" not in error
        assert _build("--format", "folders", "--root", split_root, "--out", out, "--validation-fraction", "0.2") == 1
        assert "already has split folders (train, validation)" in capsys.readouterr().err
        flat = tmp_path / "flat"
        os.makedirs(flat / "a")
        (flat / "a" / "v.mp4").write_bytes(b"x")
        assert _build("--format", "folders", "--root", str(flat), "--out", out, "--validation-fraction", "1") == 1
        assert "must be between 0 and 1" in capsys.readouterr().err
        assert _build("--format", "folders", "--root", str(flat), "--out", out, "--validation-fraction", "0.5") == 1
        assert "leaves no validation clip: no class has two videos or more" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ssv1_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv1")
    frames_root = root / "frames"
    expected, lines = {}, []
    for number, (label, num_frames) in enumerate([(0, 3), (2, 5), (1, 2)]):
        media_id = f"{100 + number}"
        os.makedirs(frames_root / media_id)
        frames = _frames(number, num_frames)
        for index, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(frames_root / media_id / f"img_{index:05d}.jpg", quality=95)
        expected[media_id] = (frames, label)
        lines.append(f"{media_id} {num_frames} {label}")
    lines.append("999 4 1")  # a folder that does not exist
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "category.txt").write_text("\n".join(CLASSES) + "\n")
    return root, expected


class TestSSV1:
    def test_round_trip_with_missing_folder(self, ssv1_data, tmp_path):
        root, expected = ssv1_data
        out = str(tmp_path / "out")
        status = _build(
            "--format", "ssv1", "--list", str(root / "train.txt"), "--frames-root",
            str(root / "frames"), "--labels", str(root / "category.txt"), "--frame-template",
            "img_{:05d}.jpg", "--size", "native", "--out", out, "--shards", "2",
        )
        assert status == 0
        manifest = _manifest(out)
        assert (manifest["listed"], manifest["converted"], manifest["failed"]) == (4, 3, 1)
        assert "frame folder not found" in manifest["failures"][0]["reason"]
        assert "train.txt:4" in manifest["failures"][0]["source"]
        _assert_round_trip(_read_records(out, "train"), expected)

    def test_default_size_is_240x320(self, ssv1_data, tmp_path):
        root, _ = ssv1_data
        out = str(tmp_path / "out")
        (tmp_path / "list.txt").write_text("100;Pushing something from left to right\n")
        assert _build(
            "--format", "ssv1", "--list", str(tmp_path / "list.txt"), "--frames-root",
            str(root / "frames"), "--labels", str(root / "category.txt"), "--frame-template",
            "img_{:05d}.jpg", "--out", out,
        ) == 0
        (record,) = _read_records(out, "train")
        assert record["frames"].shape == (3, 240, 320, 3) and record["label"] == 0

    @pytest.mark.parametrize(
        "line,message",
        [
            ("100 3", r"list.txt:2: malformed line '100 3'"),
            ("100 x 1", r"list.txt:2: malformed line .* must be integers"),
            ("100 3 7", r"list.txt:2: unknown label index 7. Expected 0 to 2"),
            ("100;Dancing", r"list.txt:2: unknown label 'Dancing'"),
        ],
    )
    def test_bad_list_lines_name_file_and_line(self, ssv1_data, tmp_path, line, message):
        root, _ = ssv1_data
        (tmp_path / "list.txt").write_text(f"101 5 2\n{line}\n")
        with pytest.raises(ValueError, match=message):
            sources.list_ssv1(str(tmp_path / "list.txt"), str(root / "frames"),
                              str(root / "category.txt"))


@pytest.fixture(scope="module")
def ssv2_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    os.makedirs(root / "videos")
    expected, entries = {}, []
    templates = ["Pushing [something] from left to right", "Pulling [something]",
                 "Holding [something]"]
    for number, label in enumerate([2, 0, 1]):
        media_id = str(5000 + number)
        frames = _frames(number, 4)
        _write_video(str(root / "videos" / f"{media_id}.webm"), frames, codec="libvpx")
        expected[media_id] = (frames, label)
        entries.append({"id": media_id, "label": "x", "template": templates[label],
                        "placeholders": ["x"]})
    (root / "labels.json").write_text(json.dumps({name: str(i) for i, name in enumerate(CLASSES)}))
    (root / "train.json").write_text(json.dumps(entries))
    return root, expected


class TestSSV2:
    def test_round_trip(self, ssv2_data, tmp_path):
        root, expected = ssv2_data
        out = str(tmp_path / "out")
        assert _build(
            "--format", "ssv2", "--annotations", str(root / "train.json"), "--videos-root",
            str(root / "videos"), "--labels", str(root / "labels.json"), "--size", "native",
            "--out", out, "--split", "validation",
        ) == 0
        assert _manifest(out, "validation")["converted"] == 3
        # libvpx at default settings loses more than JPEG alone.
        _assert_round_trip(_read_records(out, "validation"), expected, tolerance=8.0)

    def test_unknown_template_names_the_entry(self, ssv2_data, tmp_path):
        root, _ = ssv2_data
        (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "template": "Dancing"}]))
        with pytest.raises(ValueError, match=r"bad.json: entry 1 \(id 1\): unknown label 'Dancing'"):
            sources.list_ssv2(str(tmp_path / "bad.json"), str(root / "videos"),
                              str(root / "labels.json"))

    def test_malformed_json_names_the_line(self, ssv2_data, tmp_path):
        root, _ = ssv2_data
        (tmp_path / "bad.json").write_text('[\n{"id": "1",\n "template": }\n]')
        with pytest.raises(ValueError, match=r"bad.json:3: malformed JSON"):
            sources.list_ssv2(str(tmp_path / "bad.json"), str(root / "videos"),
                              str(root / "labels.json"))


@pytest.fixture(scope="module")
def kinetics_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    expected, rows = {}, []
    for number, label in enumerate([1, 0, 1, 0]):
        name = CLASSES[label]
        youtube_id = f"yt{number:03d}"
        stem = f"{youtube_id}_{number:06d}_{number + 10:06d}"
        rows.append([name, youtube_id, number, number + 10, "train"])
        if number == 3:
            continue  # listed, but the video is missing
        os.makedirs(root / "videos" / name, exist_ok=True)
        frames = _frames(number, 3)
        _write_video(str(root / "videos" / name / f"{stem}.mp4"), frames)
        expected[stem] = (frames, label)
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])
    (root / "classes.txt").write_text("\n".join(CLASSES[:2]) + "\n")
    return root, expected


class TestKinetics:
    def test_round_trip_in_parallel_with_missing_video(self, kinetics_data, tmp_path):
        root, expected = kinetics_data
        out = str(tmp_path / "out")
        status = main([
            "tfrecords", "build", "--no-progress", "--workers", "2", "--format", "kinetics",
            "--csv", str(root / "train.csv"), "--videos-root", str(root / "videos"),
            "--labels", str(root / "classes.txt"), "--out", out, "--shards", "2",
        ])
        assert status == 0
        manifest = _manifest(out)
        assert (manifest["listed"], manifest["converted"], manifest["failed"]) == (4, 3, 1)
        assert "train.csv:5" in manifest["failures"][0]["source"]
        assert "not found" in manifest["failures"][0]["reason"]
        _assert_round_trip(_read_records(out, "train"), expected, labels=CLASSES[:2])

    def test_csv_errors_name_file_and_line(self, kinetics_data, tmp_path):
        root, _ = kinetics_data
        videos = str(root / "videos")
        (tmp_path / "bad.csv").write_text("label,youtube_id\nx,y\n")
        with pytest.raises(ValueError, match=r"bad.csv:1: header .* lacks columns \['time_start'"):
            sources.list_kinetics(str(tmp_path / "bad.csv"), videos)
        (tmp_path / "bad.csv").write_text(
            "label,youtube_id,time_start,time_end,split\nPulling something,a,0,10,train\n"
            "Dancing,b,0,10,train\n"
        )
        with pytest.raises(ValueError, match=r"bad.csv:3: unknown label 'Dancing'"):
            sources.list_kinetics(str(tmp_path / "bad.csv"), videos, str(root / "classes.txt"))
        (tmp_path / "bad.csv").write_text(
            "label,youtube_id,time_start,time_end,split\nPulling something,a,zero,10,train\n"
        )
        with pytest.raises(ValueError, match=r"bad.csv:2: time_start/time_end must be numbers"):
            sources.list_kinetics(str(tmp_path / "bad.csv"), videos)


class TestLabelsAndReruns:
    def test_other_class_list_is_refused(self, ssv1_data, folders_root, tmp_path):
        root, _ = folders_root
        out = str(tmp_path / "out")
        run_dir.write_labels(split_lib.labels_path(out), ["a", "b"], keep_existing=True)
        with pytest.raises(ValueError, match=r"unknown class folder 'Pulling something'"):
            sources.list_folders(root, run_dir.read_labels(out))
        with pytest.raises(ValueError, match=r"labels.txt has 2 classes that differ .* line 1"):
            run_dir.write_labels(split_lib.labels_path(out), CLASSES, keep_existing=True)

    def test_changed_inputs_are_refused_then_overwritten(self, folders_root, tmp_path):
        root, _ = folders_root
        out = str(tmp_path / "out")
        assert _build("--format", "folders", "--root", root, "--out", out, "--shards", "2") == 0
        with pytest.raises(ValueError, match="written by a conversion: --max-frames unset before, 2 now"):
            _build_raising("--format", "folders", "--root", root, "--out", out, "--shards", "2",
                           "--max-frames", "2")
        with pytest.raises(ValueError, match="with another shard count"):
            _build_raising("--format", "folders", "--root", root, "--out", out, "--shards", "3")
        assert _build("--format", "folders", "--root", root, "--out", out, "--shards", "3",
                      "--overwrite") == 0
        assert sorted(os.listdir(out)) == [
            ".train-results", "labels.txt", "train-00000-of-00003.tfrecord",
            "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord", "train.manifest.json",
        ]

    def test_a_refused_rerun_names_what_changed(self, folders_root, tmp_path):
        root, _ = folders_root
        out = str(tmp_path / "out")
        command = ("--format", "folders", "--root", root, "--out", out)
        assert _build(*command, "--validation-fraction", "0.5", "--resize-short", "24") == 0
        for options, change in (
            (["--validation-fraction", "0.5", "--resize-short", "32"], "--resize-short 24 before, 32 now"),
            (["--validation-fraction", "0.5", "--size", "24x40"],
             "--resize-short 24 before, unset now; --size unset before, 24x40 now"),
            (["--validation-fraction", "0.5", "--resize-short", "24", "--jpeg-quality", "80"],
             "--jpeg-quality 90 before, 80 now"),
            (["--validation-fraction", "0.2", "--resize-short", "24"], "other clips listed ("),
        ):
            with pytest.raises(ValueError) as error:
                _build_raising(*command, *options)
            assert f"train-00000-of-00001.tfrecord was written by a conversion: {change}" in str(error.value)
            assert "Pass --overwrite" in str(error.value)
        assert "--validation-fraction changed" in str(error.value)
        # Shards of a conversion that kept no settings: the general message.
        results = os.path.join(out, ".train-results", "00000-of-00001.json")
        with open(results) as handle:
            record = json.load(handle)
        del record["settings"]
        with open(results, "w") as handle:
            json.dump(record, handle)
        with pytest.raises(ValueError, match="written by a conversion with other inputs or options"):
            _build_raising(*command, "--validation-fraction", "0.5", "--resize-short", "32")

    def test_every_load_option_is_a_build_flag(self):
        # The refusal above names each changed `LoadOptions` field as the flag of that name.
        import argparse

        from selfy_cli.main import build_parser

        def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
            action = next(item for item in parser._actions if isinstance(item, argparse._SubParsersAction))
            return action.choices[name]

        build = subcommand(subcommand(build_parser(), "tfrecords"), "build")
        flags = {option for action in build._actions for option in action.option_strings}
        for field in dataclasses.fields(sources.LoadOptions):
            assert "--" + field.name.replace("_", "-") in flags, field.name

    @pytest.mark.parametrize(
        "options,message",
        [
            (["--size", "240by320"], r"`size` must be HEIGHTxWIDTH .* Received: '240by320'"),
            (["--size", "240x320", "--resize-short", "128"], "pass --size or --resize-short"),
            (["--shards", "0"], r"`--shards` must be at least 1. Received: 0"),
            (["--frame-template", "{name}.jpg"], r"`--frame-template` must format one integer"),
        ],
    )
    def test_bad_options(self, folders_root, tmp_path, options, message):
        root, _ = folders_root
        with pytest.raises(ValueError, match=message):
            _build_raising("--format", "folders", "--root", root, "--out", str(tmp_path), *options)

    def test_missing_format_input(self, tmp_path):
        with pytest.raises(ValueError, match=r"format 'ssv2' needs `--annotations`"):
            _build_raising("--format", "ssv2", "--out", str(tmp_path))


def _build_raising(*argv: str) -> int:
    return main(["--debug", "tfrecords", "build", "--no-progress", "--workers", "1", *argv])


_INTERRUPTED_RUN = textwrap.dedent(
    """
    import sys, time
    import tfrecords.writer as writer

    committed = []
    convert_clip = writer.convert_clip

    def commit_hook(path):
        committed.append(path)
        print("COMMITTED", path, flush=True)

    def stalling_convert_clip(*args):
        if committed:  # the second shard is open: stall until killed
            print("STALLED", flush=True)
            time.sleep(600)
        return convert_clip(*args)

    writer._commit_hook = commit_hook
    writer.convert_clip = stalling_convert_clip
    from selfy_cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_resume_after_kill_9(folders_root, tmp_path):
    root, expected = folders_root
    out = str(tmp_path / "out")
    argv = ["tfrecords", "build", "--no-progress", "--workers", "1", "--format", "folders",
            "--root", root, "--out", out, "--shards", "3"]
    process = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_RUN, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not lines or lines[-1] != "STALLED":
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, f"run ended early: {lines}"
            lines.append(line.split()[0])
        process.kill()  # SIGKILL: no cleanup runs
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    first = os.path.join(out, "train-00000-of-00003.tfrecord")
    assert os.path.exists(first)
    assert not os.path.exists(os.path.join(out, "train-00001-of-00003.tfrecord"))
    assert not os.path.exists(os.path.join(out, "train.manifest.json"))
    first_state = os.stat(first)

    assert _build("--format", "folders", "--root", root, "--out", out, "--shards", "3") == 0
    assert os.stat(first).st_ino == first_state.st_ino  # never rewritten
    assert os.stat(first).st_mtime_ns == first_state.st_mtime_ns
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    manifest = _manifest(out)
    assert (manifest["listed"], manifest["converted"], manifest["failed"]) == (7, 4, 3)
    _assert_round_trip(_read_records(out, "train"), expected, labels=FOLDER_CLASSES)


def test_inspect_check(folders_root, tmp_path, capsys):
    root, _ = folders_root
    out = str(tmp_path / "out")
    assert _build("--format", "folders", "--root", root, "--out", out, "--shards", "2") == 0
    capsys.readouterr()
    assert main(["tfrecords", "inspect", out, "--check"]) == 0
    printed = capsys.readouterr().out
    assert "2 classes" in printed and "converted 4" in printed and "check: ok" in printed
    shard = os.path.join(out, "train-00001-of-00002.tfrecord")
    data = open(shard, "rb").read()
    with open(shard, "wb") as handle:
        handle.write(data[: len(data) - 50])
    assert main(["tfrecords", "inspect", out, "--check", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["ok"] and summary["num_errors"] >= 1


def test_a_crashing_worker_fails_only_its_task():
    # Tasks are callables: one kills its worker process outright, as a decoder
    # segfault would.
    tasks = [functools.partial(abs, -1), functools.partial(os._exit, 1),
             functools.partial(abs, -3), functools.partial(abs, -4)]
    results = list(writer._parallel_map(operator.call, tasks, 2, lambda task: "crashed"))
    assert results == [1, "crashed", 3, 4]



def _process_state(pid: int) -> tuple[str, int] | None:
    """`(state letter, parent pid)` of a process from /proc, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            # The command name is in parentheses and may hold spaces.
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _live_children(pid: int) -> dict[int, str]:
    """`{pid: command line}` of the live (not zombie) child processes of `pid`."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        state = _process_state(int(entry))
        if state is None or state[1] != pid or state[0] == "Z":
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                children[int(entry)] = stream.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return children


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux) to list processes")
def test_workers_exit_when_the_converting_process_is_killed():
    # The conversion pool, busy with tasks that would block for a minute.
    script = (
        "import time\nfrom tfrecords import writer\n"
        "list(writer._parallel_map(time.sleep, [60] * 4, 2, lambda task: None))\n"
    )
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": repository})
    try:
        deadline = time.monotonic() + 60
        workers = {}
        while len(workers) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "no worker processes started"
            time.sleep(0.1)
            workers = {pid: line for pid, line in _live_children(process.pid).items() if "spawn_main" in line}
    finally:
        process.kill()  # SIGKILL: the executor gets no chance to stop its workers
        process.wait(timeout=30)
    deadline = time.monotonic() + 10
    alive = set(workers)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if (_process_state(pid) or ("Z",))[0] != "Z"}
    for pid in alive:
        os.kill(pid, 9)
    assert not alive, f"worker processes {sorted(alive)} outlived their parent by 10 s"


def test_reasons_manifest_and_inspect_read_plainly(tmp_path, capsys):
    root = tmp_path / "videos"
    os.makedirs(root / "a")
    _write_video(str(root / "a" / "good.mp4"), _frames(0, 3))
    (root / "a" / "empty.mp4").write_bytes(b"")
    (root / "a" / "corrupt.mp4").write_bytes(b"this is not a video" * 50)
    out = str(tmp_path / "out")
    assert _build("--format", "folders", "--root", str(root), "--out", out) == 0
    manifest = _manifest(out)
    reasons = {os.path.basename(item["source"]): item["reason"] for item in manifest["failures"]}
    assert reasons["empty.mp4"] == f"empty file (0 bytes): {root / 'a' / 'empty.mp4'}"
    corrupt = str(root / "a" / "corrupt.mp4")
    assert reasons["corrupt.mp4"].startswith(f"cannot decode {corrupt}: ")
    assert reasons["corrupt.mp4"].count(corrupt) == 1  # FFmpeg's copy of the path is dropped
    # A sum of frame heights means nothing; a sum of frames does.
    assert manifest["height"] == {"min": HEIGHT, "max": HEIGHT, "mean": float(HEIGHT)}
    assert manifest["frames"]["total"] == 3
    capsys.readouterr()
    assert main(["tfrecords", "inspect", out]) == 0
    assert f"frame size: {HEIGHT}x{WIDTH}\n" in capsys.readouterr().out
