"""`tfrecords.make_dataset`, `write_split`, the decoder and feature keys."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfrecords
from selfy_tf.eval_view import EvalView
from tfrecords import features

LABELS = ["zero", "one", "two"]
NUM_CLIPS = 10
CROP = 32
SIZE = (48, 64)


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """These tests touch no Keras state: skip the shared per-test Keras reset (slow)."""
    yield


def _clip_frames(number: int, num_frames: int) -> np.ndarray:
    """Frame f of clip n is at level 10 + 15 f + n plus a left-to-right ramp."""
    ramp = np.arange(SIZE[1], dtype=np.int64)[None, :, None]
    frames = np.zeros((num_frames, *SIZE, 3), np.uint8)
    for index in range(num_frames):
        frames[index] = 10 + 15 * index + number + ramp
    return frames


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clips"))
    clips = [
        (_clip_frames(number, 4 + number % 6), number % 3, f"clip{number}")
        for number in range(NUM_CLIPS)
    ]
    tfrecords.write_split(out, "train", clips, LABELS, num_shards=3, jpeg_quality=95)
    return out


def _pattern(data_dir: str) -> str:
    return os.path.join(data_dir, "train-*.tfrecord")


def _collect(dataset, key=None):
    batches = list(dataset.as_numpy_iterator())
    return batches if key is None else [batch[key] for batch in batches]


class TestWriteSplit:
    def test_files_manifest_labels(self, data_dir):
        names = sorted(os.listdir(data_dir))
        assert [name for name in names if name.endswith(".tfrecord")] == [
            f"train-0000{index}-of-00003.tfrecord" for index in range(3)
        ]
        assert tfrecords.read_labels(data_dir) == LABELS
        with open(os.path.join(data_dir, "train.manifest.json")) as handle:
            manifest = json.load(handle)
        assert (manifest["listed"], manifest["converted"], manifest["failed"]) == (10, 10, 0)
        assert manifest["per_class"] == {"zero": 4, "one": 3, "two": 3}

    def test_bad_clips(self, tmp_path):
        frames = np.zeros((2, 8, 8, 3), np.uint8)
        with pytest.raises(ValueError, match=r"`clips\[1\]` has label_index=5. Expected 0 to 2"):
            tfrecords.write_split(str(tmp_path), "train", [(frames, 0, "a"), (frames, 5, "b")], LABELS)
        with pytest.raises(ValueError, match=r"`clips\[0\]`: `frames` must be uint8"):
            tfrecords.write_split(str(tmp_path), "train", [(frames.astype(float), 0, "a")], LABELS)
        with pytest.raises(ValueError, match=r"`split` must be letters"):
            tfrecords.write_split(str(tmp_path), "a/b", [(frames, 0, "a")], LABELS)

    def test_read_labels_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no labels.txt in"):
            tfrecords.read_labels(str(tmp_path))


class TestEvalPipeline:
    def test_every_clip_once_with_centre_frames(self, data_dir):
        dataset = tfrecords.make_dataset(
            _pattern(data_dir), training=False, batch_size=4, eval_view=EvalView(3, CROP, eval_size=SIZE),
            as_dict=True,
        )
        batches = _collect(dataset)
        assert [len(batch["label"]) for batch in batches] == [4, 4, 2]
        seen = {}
        for batch in batches:
            assert batch["frames"].shape[1:] == (3, CROP, CROP, 3)
            assert batch["frames"].dtype == np.uint8 and batch["label"].dtype == np.int32
            for frames, label, media_id in zip(batch["frames"], batch["label"], batch["media_id"]):
                seen[media_id.decode()] = (frames, label)
        assert sorted(seen) == sorted(f"clip{number}" for number in range(NUM_CLIPS))
        for number in range(NUM_CLIPS):
            frames, label = seen[f"clip{number}"]
            assert label == number % 3
            num_available = 4 + number % 6
            tick = num_available / 3
            centres = [int(tick / 2 + tick * segment) for segment in range(3)]
            source = _clip_frames(number, num_available)[centres]
            expected = source[:, 8:40, 16:48]  # centre crop of 48x64
            np.testing.assert_allclose(frames, expected, atol=4)

    def test_multi_view_layout(self, data_dir):
        dataset = tfrecords.make_dataset(
            _pattern(data_dir), training=False, batch_size=5,
            eval_view=EvalView(2, CROP, eval_size=SIZE, num_clips=2, num_crops=3), as_dict=True,
        )
        batch = next(iter(dataset))
        assert batch["frames"].shape == (5, 6, 2, CROP, CROP, 3)
        media_id = batch["media_id"][0].numpy().decode()
        number = int(media_id[len("clip"):])
        num_available = 4 + number % 6
        source = _clip_frames(number, num_available)
        clip_indices = [[int(num_available / 2 * (s + (k + 0.5) / 2)) for s in range(2)] for k in range(2)]
        for clip in range(2):
            for crop, left in enumerate((0, 16, 32)):
                view = batch["frames"][0, clip * 3 + crop].numpy()
                expected = source[clip_indices[clip]][:, 8:40, left : left + CROP]
                np.testing.assert_allclose(view, expected, atol=4)

    def test_the_view_must_take_the_clip_size_asked_for(self, data_dir):
        with pytest.raises(ValueError, match=r"`eval_view` takes 3 frames of 32x32, but num_frames=4"):
            tfrecords.make_dataset(
                _pattern(data_dir), training=False, batch_size=1, num_frames=4, eval_view=EvalView(3, 32)
            )

    def test_eval_resizes_to_eval_size(self, data_dir):
        dataset = tfrecords.make_dataset(
            _pattern(data_dir), training=False, num_frames=2, batch_size=2, crop_size=CROP,
            eval_view=EvalView(2, CROP, eval_size=(36, 40)),
        )
        frames, labels = next(iter(dataset))
        assert frames.shape == (2, 2, CROP, CROP, 3) and labels.shape == (2,)


class TestTrainPipeline:
    def test_shapes_and_drop_remainder(self, data_dir):
        dataset = tfrecords.make_dataset(
            _pattern(data_dir), training=True, num_frames=4, batch_size=3, crop_size=CROP, seed=0
        )
        batches = _collect(dataset)
        assert len(batches) == 3  # 10 clips, remainder dropped
        for frames, labels in batches:
            assert frames.shape == (3, 4, CROP, CROP, 3) and frames.dtype == np.uint8
            assert labels.shape == (3,) and labels.dtype == np.int32

    def test_seed_gives_the_same_batches(self, data_dir):
        def run(seed):
            return _collect(
                tfrecords.make_dataset(
                    _pattern(data_dir), training=True, num_frames=4, batch_size=5,
                    crop_size=CROP, seed=seed, shuffle_buffer=10,
                )
            )

        first, again, other = run(7), run(7), run(8)
        for (frames_a, labels_a), (frames_b, labels_b) in zip(first, again):
            np.testing.assert_array_equal(frames_a, frames_b)
            np.testing.assert_array_equal(labels_a, labels_b)
        assert any(
            not np.array_equal(frames_a, frames_c) for (frames_a, _), (frames_c, _) in zip(first, other)
        )

    def test_no_flip_class_keeps_orientation(self, data_dir):
        # Source frames get brighter to the right; class 0 is never flipped.
        dataset = tfrecords.make_dataset(
            _pattern(data_dir), training=True, num_frames=2, batch_size=1, crop_size=CROP,
            seed=3, no_flip_classes=(0,), repeat=True, shuffle_buffer=2,
        )
        sides = {0: set(), 1: set()}
        for frames, labels in dataset.take(40).as_numpy_iterator():
            label = int(labels[0])
            if label in sides:
                unflipped = frames[0, 0, :, 0].mean() < frames[0, 0, :, -1].mean()
                sides[label].add(bool(unflipped))
        assert sides[0] == {True}
        assert sides[1] == {True, False}


class TestFilesAndDistribution:
    def test_pattern_matching_nothing(self, tmp_path):
        with pytest.raises(ValueError, match=r"`file_pattern` matches no file. Received: '.*nothing-\*"):
            tfrecords.make_dataset(str(tmp_path / "nothing-*"), training=True, batch_size=2)

    def test_fewer_files_than_pipelines(self, data_dir):
        context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=0)
        with pytest.raises(ValueError, match="3 TFRecord files cannot be shared among 4 input pipelines"):
            tfrecords.make_dataset(_pattern(data_dir), training=True, batch_size=2, input_context=context)

    def test_pipelines_read_disjoint_files_with_per_replica_batch(self, data_dir):
        seen = []
        for pipeline in range(2):
            context = tf.distribute.InputContext(
                num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
            )
            dataset = tfrecords.make_dataset(
                _pattern(data_dir), training=False, batch_size=4, eval_view=EvalView(2, CROP, eval_size=SIZE),
                input_context=context, as_dict=True,
            )
            batches = _collect(dataset)
            assert max(len(batch["label"]) for batch in batches) == 2  # 4 global / 2 replicas
            seen.append({media_id for batch in batches for media_id in batch["media_id"]})
        assert not seen[0] & seen[1]
        assert len(seen[0] | seen[1]) == NUM_CLIPS

    def test_distribute_datasets_from_function(self, data_dir):
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        dataset = strategy.distribute_datasets_from_function(
            lambda context: tfrecords.make_dataset(
                _pattern(data_dir), training=True, num_frames=2, batch_size=2, crop_size=CROP,
                input_context=context,
            )
        )
        frames, labels = next(iter(dataset))
        assert frames.shape == (2, 2, CROP, CROP, 3) and labels.shape == (2,)


def test_custom_feature_keys_round_trip(tmp_path):
    keys = {"image": "frames/jpeg", "label_index": "label", "media_id": "video_id"}
    frames = _clip_frames(0, 3)
    tfrecords.write_split(str(tmp_path), "validation", [(frames, 2, "v")], LABELS, feature_keys=keys)
    dataset = tfrecords.make_dataset(
        str(tmp_path / "validation-*.tfrecord"), training=False, batch_size=1,
        eval_view=EvalView(3, CROP, eval_size=SIZE), feature_keys=keys, as_dict=True,
    )
    batch = next(iter(dataset))
    assert int(batch["label"][0]) == 2 and batch["media_id"][0] == b"v"
    with pytest.raises(ValueError, match=r"`feature_keys` has unknown entries \['frames'\]"):
        features.FeatureKeys.from_any({"frames": "x"})


def test_encode_clip_layout():
    serialized = tfrecords.encode_clip(_clip_frames(1, 2), 1, "one", "id-1")
    example = tf.train.SequenceExample.FromString(serialized)
    context = example.context.feature
    assert context[tfrecords.LABEL_INDEX_KEY].int64_list.value == [1]
    assert context[tfrecords.LABEL_TEXT_KEY].bytes_list.value == [b"one"]
    assert context[tfrecords.MEDIA_ID_KEY].bytes_list.value == [b"id-1"]
    frames = example.feature_lists.feature_list[tfrecords.IMAGE_KEY].feature
    assert len(frames) == 2
    assert tf.io.decode_jpeg(frames[0].bytes_list.value[0]).shape == (*SIZE, 3)


class TestLabelRange:
    """Hand-written records with labels outside `[0, num_classes)` stop the pipeline."""

    @staticmethod
    def _write(directory, labels) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "validation-00000-of-00001.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for number, label in enumerate(labels):
                writer.write(tfrecords.encode_clip(_clip_frames(number, 3), label))
        with open(os.path.join(directory, "labels.txt"), "w") as stream:
            stream.write("".join(f"{name}\n" for name in LABELS))
        return path

    @pytest.mark.parametrize("training", [False, True])
    @pytest.mark.parametrize("bad_label", [-1, 999])
    def test_error_names_shard_record_and_label(self, tmp_path, training, bad_label):
        path = self._write(str(tmp_path), [0, 2, bad_label, 1])
        dataset = tfrecords.make_dataset(
            path, training=training, num_frames=3, batch_size=1, crop_size=CROP, seed=1,
        )
        expected = rf"shard {path} record 2: label {bad_label} is outside \[0, 3\)"
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
            _collect(dataset)

    def test_explicit_num_classes_and_opt_out(self, tmp_path):
        path = self._write(str(tmp_path), [0, 2, 1])
        dataset = tfrecords.make_dataset(
            path, training=False, num_frames=3, batch_size=3, crop_size=CROP, num_classes=2,
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"record 1: label 2 is outside \[0, 2\)"):
            _collect(dataset)
        unchecked = tfrecords.make_dataset(
            path, training=False, num_frames=3, batch_size=3, crop_size=CROP, num_classes=None,
        )
        assert _collect(unchecked)[0][1].tolist() == [0, 2, 1]


class TestKnownLength:
    """The datasets know their length (`cardinality`), from the split manifest or by counting."""

    def test_cardinality_follows_batching_and_sharding(self, data_dir, tmp_path):
        train = tfrecords.make_dataset(_pattern(data_dir), training=True, batch_size=3, crop_size=CROP, num_frames=4)
        assert int(train.cardinality()) == NUM_CLIPS // 3  # drop_remainder in training
        evaluation = tfrecords.make_dataset(_pattern(data_dir), training=False, batch_size=3, crop_size=CROP, num_frames=4)
        assert int(evaluation.cardinality()) == -(-NUM_CLIPS // 3) == len(list(evaluation))
        repeated = tfrecords.make_dataset(
            _pattern(data_dir), training=True, batch_size=3, crop_size=CROP, num_frames=4, repeat=True
        )
        assert repeated.cardinality() == tf.data.INFINITE_CARDINALITY
        # Pipeline 1 of 2 reads the second of the three shards (10 clips as 3 + 3 + 4).
        with open(os.path.join(data_dir, "train.manifest.json")) as stream:
            shard_clips = [shard["clips"] for shard in json.load(stream)["shards"]]
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
        sharded = tfrecords.make_dataset(
            _pattern(data_dir), training=False, batch_size=2, crop_size=CROP, num_frames=4, input_context=context
        )
        assert int(sharded.cardinality()) == shard_clips[1] == len(list(sharded))
        # Shards written without a manifest are counted.
        for name in os.listdir(data_dir):
            if name.endswith(".tfrecord"):
                with open(os.path.join(data_dir, name), "rb") as source, open(tmp_path / name, "wb") as copy:
                    copy.write(source.read())
        counted = tfrecords.make_dataset(
            str(tmp_path / "train-*.tfrecord"), training=False, batch_size=4, crop_size=CROP, num_frames=4,
            num_classes=None,
        )
        assert int(counted.cardinality()) == -(-NUM_CLIPS // 4)

    def test_plain_fit_runs_every_epoch_without_running_out_of_data(self, data_dir, recwarn):
        import keras

        train = tfrecords.make_dataset(_pattern(data_dir), training=True, batch_size=2, crop_size=CROP, num_frames=4)
        validation = tfrecords.make_dataset(_pattern(data_dir), training=False, batch_size=3, crop_size=CROP, num_frames=4)
        model = keras.Sequential([
            keras.Input((4, CROP, CROP, 3)), keras.layers.Rescaling(1 / 255), keras.layers.GlobalAveragePooling3D(),
            keras.layers.Dense(len(LABELS)),
        ])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        steps = []

        class CountSteps(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                steps.append(0)

            def on_train_batch_end(self, batch, logs=None):
                steps[-1] += 1

        history = model.fit(train, validation_data=validation, epochs=2, verbose=0, callbacks=[CountSteps()])
        assert steps == [NUM_CLIPS // 2] * 2
        assert len(history.history["val_loss"]) == 2
        messages = [str(warning.message) for warning in recwarn]
        assert not any("ran out of data" in message for message in messages), messages
