"""Horizontal flips that respect direction: the plan from labels.txt, and the training clips it gives."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from trainer import configs, presets
from trainer.flips import mirror_name, plan_flips

# Hand-made class list; the expected mirror pairs are written out below.
LABELS = [
    "slide_left",  # 0 <-> 1
    "slide_right",
    "Moving something from left to right",  # 2 <-> 3
    "Moving something from right to left",
    "rotate_clockwise",  # 4 <-> 5
    "rotate_anti-clockwise",
    "turnLeft",  # 6 <-> 7 (camelCase)
    "TURN RIGHT",
    "point left",  # 8: no "point right"
    "wave",  # 9: no direction word
    "spotlight",  # 10: "right" inside a word is not a direction
    "counter clockwise spin",  # 11 <-> 12
    "clockwise spin",
]
EXPECTED_PAIRS = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 11: 12, 12: 11}


class TestFlipPlan:
    def test_mirror_pairs_from_label_names(self):
        plan = plan_flips(LABELS)
        assert plan.flip_label_map == EXPECTED_PAIRS
        assert plan.no_flip_classes == (8,)
        assert plan.unpaired == (8,) and plan.explicit == ()

    def test_words_are_compared_case_and_separator_blind(self):
        assert mirror_name("Slide-Left") == ("slide", "right")
        assert mirror_name("moveLeftwards") == ("move", "rightwards")
        assert mirror_name("anticlockwise") == mirror_name("counter_clockwise") == ("clockwise",)

    def test_two_classes_with_the_same_words_are_ambiguous(self):
        plan = plan_flips(["slide_left", "Slide Left", "slide_right", "jump"])
        assert plan.flip_label_map == {}
        assert plan.no_flip_classes == (0, 1, 2)

    def test_no_flip_classes_override_and_break_their_pair(self):
        plan = plan_flips(LABELS, no_flip_classes=(0, 9))
        expected = {key: value for key, value in EXPECTED_PAIRS.items() if key not in (0, 1)}
        assert plan.flip_label_map == expected
        # 1 (slide_right) has no class left to swap with.
        assert plan.no_flip_classes == (0, 1, 8, 9)
        assert plan.explicit == (0, 9) and plan.unpaired == (1, 8)

    def test_policies_none_and_all(self):
        assert plan_flips(LABELS, "none").no_flip_classes == tuple(range(len(LABELS)))
        assert plan_flips(LABELS, "none").flip_label_map == {}
        everything = plan_flips(LABELS, "all", no_flip_classes=(3,))
        assert everything.flip_label_map == {} and everything.no_flip_classes == (3,)

    def test_summary_line(self):
        line = plan_flips(["slide_left", "slide_right", "turn_left", "wave", "jump"]).describe()
        assert line == (
            "Flips (data.flip=auto): classes 0<->1 (slide_left/slide_right) swap labels when flipped; "
            "class 2 (turn_left) never flipped (left/right name without a mirror class to swap with); "
            "2 other classes flipped with their label."
        )
        assert plan_flips(["a", "b"], "none").describe() == "Flips (data.flip=none): no clip is flipped."

    def test_bad_policy_and_class(self):
        with pytest.raises(ValueError, match=r"`data.flip` must be one of \('auto', 'none', 'all'\). Received: 'mirror'"):
            plan_flips(LABELS, "mirror")
        with pytest.raises(ValueError, match=r"`data.no_flip_classes` names classes \[20\], but labels.txt lists 13"):
            plan_flips(LABELS, no_flip_classes=(20,))
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["data.flip=mirror"])
        with pytest.raises(ValueError, match=r"`data.flip` must be one of"):
            configs.validate(config)


# Clips whose flip can be read back: the green channel rises from left to
# right (falls once flipped), and the blue channel codes the stored class.
FLIP_LABELS = ["slide_left", "slide_right", "turn_left", "wave"]
CLASS_CODE = 50


def _coded_clip(label: int, num_frames: int = 4, height: int = 40, width: int = 48) -> np.ndarray:
    clip = np.zeros((num_frames, height, width, 3), np.uint8)
    clip[..., 1] = (np.arange(width) * 5)[None, None, :]
    clip[..., 2] = CLASS_CODE * label
    return clip


def _read_back(clips: np.ndarray, targets: np.ndarray) -> list[tuple[int, bool, int]]:
    """`(stored class, flipped, training label)` of each clip of a batch."""
    rows = clips[:, 0, clips.shape[2] // 2, :, 1].astype(int)
    stored = np.round(clips[:, 0, 0, 0, 2] / CLASS_CODE).astype(int)
    return [
        (int(code), bool(row[-1] < row[0]), int(label))
        for code, row, label in zip(stored, rows, targets.argmax(axis=1))
    ]


def _check(seen: list[tuple[int, bool, int]]) -> None:
    expected_after_flip = {0: 1, 1: 0, 3: 3}
    flipped = {label: 0 for label in range(len(FLIP_LABELS))}
    for stored, was_flipped, label in seen:
        if was_flipped:
            assert stored in expected_after_flip, f"class {FLIP_LABELS[stored]} was flipped"
            assert label == expected_after_flip[stored], (stored, label)
            flipped[stored] += 1
        else:
            assert label == stored
    # Dozens of coin tosses per class: each flippable class was flipped.
    assert flipped[0] and flipped[1] and flipped[3] and not flipped[2]


class TestFlippedTrainingClips:
    def test_tfrecord_pipeline_gives_a_flipped_clip_its_mirror_label(self, tmp_path):
        import tensorflow as tf

        from tfrecords import write_split

        train_module = importlib.import_module("trainer.train")
        clips = [(_coded_clip(label), label, f"clip{index}") for index, label in enumerate([0, 1, 2, 3] * 4)]
        write_split(str(tmp_path), "train", clips, FLIP_LABELS)
        config = configs.resolve_model(
            configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.num_classes=4", "data.crop_scales=[1.0]"])
        )
        data = train_module.inspect_data_dir(str(tmp_path), config)
        dataset = train_module._train_dataset(
            tf.distribute.get_strategy(), config, data, epoch=0, skip_steps=0, num_steps=40, global_batch=4
        )
        seen = [item for frames, targets in dataset for item in _read_back(frames.numpy(), targets.numpy())]
        assert len(seen) == 160
        _check(seen)

    def test_numpy_batches_give_a_flipped_clip_its_mirror_label(self):
        from tfrecords import crop_windows
        from trainer import numpy_data

        plan = plan_flips(FLIP_LABELS)
        labels = np.array([0, 1, 2, 3] * 4)
        batches = numpy_data.TrainBatches(
            np.stack([_coded_clip(label) for label in labels]), labels, num_classes=4, batch_size=4, seed=3,
            skip_steps=0, num_steps=40, num_frames=4, crop_size=32, scales=crop_windows.MULTI_SCALE_CROP_SCALES,
            no_flip_classes=plan.no_flip_classes, flip_label_map=plan.flip_label_map,
        )
        seen = [item for index in range(len(batches)) for item in _read_back(*batches[index])]
        assert len(seen) == 160
        _check(seen)
