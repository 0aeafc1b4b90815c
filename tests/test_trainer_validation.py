"""Validation scores every clip exactly once (padded batches of weight 0), with one or several views."""

from __future__ import annotations

import numpy as np
import pytest
from _validation import reference_validation

from trainer import configs, presets
from trainer.synthetic import write_color_dataset

# 15 clips in shards of 7 and 8: no batch size used here divides it.
NUM_VALIDATION = 15


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_color_dataset(
        str(tmp_path_factory.mktemp("color_data")), num_train=16, num_validation=NUM_VALIDATION, num_shards=2
    )


class TestPaddedEvaluationInput:
    @pytest.mark.parametrize("num_pipelines, num_replicas, batch_size", [(1, 1, 4), (1, 2, 4), (2, 2, 4), (2, 4, 8)])
    def test_every_clip_once_over_all_pipelines(self, data_dir, num_pipelines, num_replicas, batch_size):
        import tensorflow as tf

        from tfrecords import make_dataset, open_split
        from tfrecords.dataset import padded_eval_steps

        split = open_split(data_dir, "validation")
        steps = padded_eval_steps(split.files, batch_size, num_pipelines, num_replicas)
        per_replica = batch_size // num_replicas
        replicas_per_pipeline = num_replicas // num_pipelines
        # Shards of 7 and 8 clips; pipeline p reads shards p, p + P, ...
        shard_sizes = [7, 8]
        pipeline_sizes = [sum(shard_sizes[p::num_pipelines]) for p in range(num_pipelines)]
        assert steps == max(-(-size // (per_replica * replicas_per_pipeline)) for size in pipeline_sizes)
        media_ids, padding = [], 0
        for pipeline in range(num_pipelines):
            context = tf.distribute.InputContext(num_pipelines, pipeline, num_replicas)
            dataset = make_dataset(
                split.files, training=False, num_frames=4, batch_size=batch_size, crop_size=32,
                input_context=context, pad_batches=True, as_dict=True,
            )
            assert int(dataset.cardinality()) == steps * replicas_per_pipeline
            batches = list(dataset)
            assert len(batches) == steps * replicas_per_pipeline
            for batch in batches:
                assert batch["frames"].shape[0] == per_replica
                weights = batch["weight"].numpy()
                assert set(weights.tolist()) <= {0.0, 1.0}
                media_ids += [media_id for media_id, weight in zip(batch["media_id"].numpy(), weights) if weight]
                padding += int(np.sum(weights == 0))
                assert not batch["frames"].numpy()[weights == 0].any()
        assert sorted(media_ids) == sorted(f"clip1-{index:05d}".encode() for index in range(NUM_VALIDATION))
        assert padding == steps * batch_size - NUM_VALIDATION

    def test_padding_is_for_evaluation_only(self, data_dir):
        from tfrecords import make_dataset

        with pytest.raises(ValueError, match="`pad_batches` pads evaluation batches; it needs training=False"):
            make_dataset(f"{data_dir}/train-*.tfrecord", training=True, batch_size=4, pad_batches=True)

    def test_numpy_batches_pad_the_last_batch(self):
        from selfy_tf.eval_view import EvalView
        from trainer.numpy_data import EvalBatches

        # Clip i is filled with the value 10 + i: the batches tell which clip they hold.
        frames = (10 + np.arange(7, dtype=np.uint8))[:, None, None, None, None] * np.ones((7, 4, 32, 32, 3), np.uint8)
        labels = np.arange(7) % 3
        batches = EvalBatches(frames, labels, 3, batch_size=4, num_steps=2, view=EvalView(4, 32, eval_size=(32, 32)), weight=8 / 7)
        clips, targets, weights = zip(*(batches[index] for index in range(len(batches))))
        clips, targets, weights = np.concatenate(clips), np.concatenate(targets), np.concatenate(weights)
        assert clips.shape == (8, 4, 32, 32, 3)
        np.testing.assert_array_equal(clips[:7, 0, 0, 0, 0], 10 + np.arange(7))
        assert not clips[7].any()
        np.testing.assert_allclose(weights, [8 / 7] * 7 + [0.0])
        np.testing.assert_array_equal(targets[:7].argmax(axis=1), labels)


class TestValidationMetrics:
    @pytest.mark.parametrize("num_clips, num_crops", [(1, 1), (2, 3)])
    def test_val_metrics_equal_numpy_over_every_clip(self, data_dir, tmp_path, num_clips, num_crops):
        from trainer.train import train

        config = configs.apply_overrides(
            presets.get_preset("tiny_cpu"),
            [
                "train.epochs=1", "train.steps_per_epoch=3", "data.batch_size=4",
                f"data.validation_num_clips={num_clips}", f"data.validation_num_crops={num_crops}",
            ],
        )
        run_dir = str(tmp_path / "run")
        result = train(config, data_dir, run_dir, verbose=0)
        reference = reference_validation(run_dir, data_dir, num_clips, num_crops)
        assert reference["num_examples"] == NUM_VALIDATION
        history = result.history
        # Top-1 is a count of right answers over 15 clips: equal to float32 round-off.
        assert history["val_top1"][-1] == pytest.approx(reference["val_top1"], abs=1e-6)
        assert history["val_top5"][-1] == pytest.approx(reference["val_top5"], abs=1e-6)
        assert history["val_loss"][-1] == pytest.approx(reference["val_loss"], rel=1e-4)
