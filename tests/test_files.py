"""Atomic writes of `selfy_tf.files`."""

import glob
import json
import os
import threading

import pytest

from selfy_tf.files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    temporary_pattern,
)


def test_writes_create_missing_directories_and_leave_no_temporary(tmp_path):
    text_path = tmp_path / "a" / "b" / "labels.txt"
    json_path = tmp_path / "c" / "eval.json"
    bytes_path = tmp_path / "model.tflite"
    assert atomic_write_text(text_path, "open\nclose\n") == os.fspath(text_path)
    atomic_write_json(json_path, {"top1": 0.5, "names": ["é"]})
    atomic_write_bytes(bytes_path, b"\x00\x01TFL3")
    assert text_path.read_text(encoding="utf-8") == "open\nclose\n"
    assert json.loads(json_path.read_text(encoding="utf-8")) == {"top1": 0.5, "names": ["é"]}
    assert json_path.read_text(encoding="utf-8").endswith("}\n")
    assert bytes_path.read_bytes() == b"\x00\x01TFL3"
    leftovers = [name for _, _, names in os.walk(tmp_path) for name in names if ".tmp-" in name]
    assert leftovers == []


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "last.keras"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path, suffix=".keras") as temporary:
            with open(temporary, "w") as stream:
                stream.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["last.keras"]


def test_temporary_is_a_hidden_sibling_with_the_suffix(tmp_path):
    path = tmp_path / "weights" / "model.weights.h5"
    with atomic_path(path, suffix=".weights.h5") as temporary:
        assert os.path.dirname(temporary) == os.fspath(path.parent)
        name = os.path.basename(temporary)
        assert name.startswith(".model.weights.h5.tmp-") and name.endswith(".weights.h5")
        assert not path.exists()
        with open(temporary, "wb") as stream:
            stream.write(b"new")
    assert path.read_bytes() == b"new"


def test_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path):
    path = tmp_path / "plot.png"
    with pytest.raises(FileNotFoundError):
        with atomic_path(path):
            pass
    assert not path.exists()


def test_concurrent_writers_of_one_path_never_share_a_temporary(tmp_path):
    path = tmp_path / "history.csv"
    names, errors = [], []
    barrier = threading.Barrier(8)

    def write(index):
        try:
            with atomic_path(path) as temporary:
                names.append(temporary)
                barrier.wait(timeout=30)
                with open(temporary, "w") as stream:
                    stream.write(f"writer {index}\n" * 1000)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(names)) == 8
    lines = path.read_text().splitlines()
    assert len(lines) == 1000 and len(set(lines)) == 1  # one writer's whole file


def test_temporary_pattern_finds_the_temporaries_left_by_a_killed_writer(tmp_path):
    pattern = temporary_pattern(str(tmp_path / "train-*-of-00003.tfrecord"))
    with atomic_path(tmp_path / "train-00001-of-00003.tfrecord") as temporary:
        with open(temporary, "wb") as stream:
            stream.write(b"partial")
        assert glob.glob(pattern) == [temporary]
        # Neither finished files nor other splits' temporaries match.
        (tmp_path / "train-00000-of-00003.tfrecord").write_bytes(b"done")
        with atomic_path(tmp_path / "validation-00000-of-00003.tfrecord") as other:
            open(other, "wb").close()
            assert glob.glob(pattern) == [temporary]
    assert glob.glob(pattern) == []
