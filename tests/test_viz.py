"""Visualisation: soft-argmax motion field, STSS maps, Grad-CAM, report, `selfy viz`."""

import json

import numpy as np
import pytest

from selfy_tf.viz import motion_field
from selfy_tf.viz.report import HTMLReport


def _translating_features(displacement, num_frames=5, size=18, channels=16, seed=0):
    """Random per-pixel feature vectors whose content moves by `displacement` per frame.

    The content at (y, x) in frame t is at (y + dy, x + dx) in frame t + 1.
    """
    dy, dx = displacement
    margin = 2 * num_frames * max(abs(dy), abs(dx)) + 1
    canvas = np.random.default_rng(seed).normal(size=(size + 2 * margin, size + 2 * margin, channels))
    frames = [
        canvas[margin - t * dy : margin - t * dy + size, margin - t * dx : margin - t * dx + size]
        for t in range(num_frames)
    ]
    return np.stack(frames)[None].astype(np.float32)


def _loop_soft_argmax(maps, temperature):
    """Plain-loop soft-argmax of one [U, V] map (independent reference)."""
    height, width = maps.shape
    peak = maps.max()
    total = sum_y = sum_x = 0.0
    for u in range(height):
        for v in range(width):
            weight = np.exp((maps[u, v] - peak) / temperature)
            total += weight
            sum_y += weight * (u - height // 2)
            sum_x += weight * (v - width // 2)
    return np.array([sum_y / total, sum_x / total])


class TestMotionFieldBasic:
    def test_shapes(self):
        features = np.random.default_rng(0).normal(size=(2, 4, 6, 7, 8))
        field = motion_field.compute_motion_field(features, window=(3, 5, 5))
        assert field.displacement.shape == (2, 4, 6, 7, 3, 2)
        assert field.velocity.shape == (2, 4, 6, 7, 2)
        assert field.confidence.shape == (2, 4, 6, 7, 3)
        np.testing.assert_array_equal(field.temporal_offsets, [-1, 0, 1])

    def test_offsets_outside_the_clip_are_nan(self):
        features = np.random.default_rng(0).normal(size=(1, 3, 5, 5, 8))
        field = motion_field.compute_motion_field(features, window=(5, 3, 3))
        # Frame 0 has no frames at offsets -2 and -1; frame 2 none at +1, +2;
        # frame 1 none at -2, +2.
        assert np.isnan(field.displacement[0, 0, :, :, :2]).all()
        assert np.isfinite(field.displacement[0, 0, :, :, 2:]).all()
        assert np.isnan(field.displacement[0, 2, :, :, 3:]).all()
        assert np.isnan(field.displacement[0, 1, :, :, [0, 4]]).all()
        assert np.isfinite(field.displacement[0, 1, :, :, 1:4]).all()

    def test_valid_mask_matches_loops(self):
        num_frames, height, width, window = 3, 4, 5, (3, 3, 5)
        mask = motion_field.stss_valid_mask(num_frames, height, width, window)
        for t in range(num_frames):
            for y in range(height):
                for x in range(width):
                    for l in range(3):
                        for u in range(3):
                            for v in range(5):
                                expected = (
                                    0 <= t + l - 1 < num_frames
                                    and 0 <= y + u - 1 < height
                                    and 0 <= x + v - 2 < width
                                )
                                assert mask[t, y, x, l, u, v] == expected

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"`window` must be three odd integers.*\(5, 8, 9\)"):
            motion_field.compute_motion_field(np.ones((1, 2, 4, 4, 3)), window=(5, 8, 9))
        with pytest.raises(ValueError, match=r"`temperature` must be positive.*temperature=0"):
            motion_field.soft_argmax_displacement(np.ones((3, 3)), temperature=0)
        with pytest.raises(ValueError, match=r"`kernel_sigma` must be positive.*kernel_sigma=-1"):
            motion_field.soft_argmax_displacement(np.ones((3, 3)), kernel_sigma=-1)
        with pytest.raises(ValueError, match=r"`similarity` must be \[batch.*shape=\(3, 3\)"):
            motion_field.motion_field_from_stss(np.ones((3, 3)))


class TestMotionFieldCorrectness:
    def test_soft_argmax_matches_loop_reference(self):
        maps = np.random.default_rng(1).uniform(-1, 1, size=(4, 5, 7))
        displacement, peak = motion_field.soft_argmax_displacement(maps, temperature=0.3)
        for index in range(4):
            np.testing.assert_allclose(
                displacement[index], _loop_soft_argmax(maps[index], 0.3), rtol=1e-10, atol=1e-12
            )
        np.testing.assert_allclose(peak, maps.reshape(4, -1).max(-1))

    def test_kernel_soft_argmax_ignores_a_far_second_peak(self):
        maps = np.zeros((9, 9))
        maps[4 + 2, 4 - 3] = 1.0  # main peak at (2, -3)
        maps[4 - 4, 4 + 4] = 0.99  # distractor at (-4, 4)
        plain, _ = motion_field.soft_argmax_displacement(maps, temperature=0.05)
        kernel, _ = motion_field.soft_argmax_displacement(maps, temperature=0.05, kernel_sigma=1.0)
        assert np.linalg.norm(plain - [2, -3]) > 1.0  # pulled towards the distractor
        np.testing.assert_allclose(kernel, [2, -3], atol=0.01)

    def test_fit_velocity_analytic(self):
        offsets = np.array([-2, -1, 0, 1, 2])
        displacement = np.outer(offsets, [0.5, -1.5])[None]
        np.testing.assert_allclose(motion_field.fit_velocity(displacement, offsets)[0], [0.5, -1.5])
        displacement[0, :2] = np.nan  # only offsets 0, 1, 2 known
        np.testing.assert_allclose(motion_field.fit_velocity(displacement, offsets)[0], [0.5, -1.5])

    @pytest.mark.parametrize(
        "displacement", [(0, 1), (0, -2), (1, 0), (-2, 0), (1, -1), (2, 1)]
    )
    @pytest.mark.parametrize("kernel_sigma", [None, 1.5])
    def test_recovers_direction_and_speed_of_a_translating_pattern(self, displacement, kernel_sigma):
        features = _translating_features(displacement)
        field = motion_field.compute_motion_field(
            features, window=(5, 9, 9), temperature=0.05, kernel_sigma=kernel_sigma
        )
        margin = 2 * 2 * 2 + 1  # positions whose match at offset +-2 stays in the map
        interior = field.velocity[0, :, margin:-margin, margin:-margin]
        np.testing.assert_allclose(
            interior, np.broadcast_to(displacement, interior.shape), atol=0.02
        )
        # Per temporal offset: the displacement is offset x velocity.
        middle = field.displacement[0, 2, margin:-margin, margin:-margin]
        for offset_index, offset in enumerate(field.temporal_offsets):
            np.testing.assert_allclose(
                middle[..., offset_index, :],
                np.broadcast_to(np.multiply(offset, displacement), middle[..., 0, :].shape),
                atol=0.05,
            )
        speed = np.linalg.norm(interior, axis=-1)
        np.testing.assert_allclose(speed, np.hypot(*displacement), atol=0.03)

    def test_patch_features_are_mean_free_patches(self):
        frames = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 10, 3))
        features = motion_field.patch_features(frames, patch_size=4, stride=2)
        assert features.shape == (1, 2, 3, 4, 48)
        expected = frames[1, 2:6, 4:8].reshape(-1)  # patch (row 1, column 2)
        np.testing.assert_allclose(features[0, 1, 1, 2], expected - expected.mean(), rtol=1e-5)
        with pytest.raises(ValueError, match=r"`patch_size` and `stride` must be positive.*stride=0"):
            motion_field.patch_features(frames, stride=0)

    def test_static_pattern_has_zero_motion(self):
        field = motion_field.compute_motion_field(_translating_features((0, 0)), window=(3, 9, 9))
        np.testing.assert_allclose(field.velocity[0, :, 4:-4, 4:-4], 0.0, atol=0.03)


@pytest.fixture(scope="module")
def tiny_selfy_model():
    import keras

    from selfy_tf.models import create_model

    # Seeded: the probes below should not depend on which tests ran before.
    keras.utils.set_random_seed(0)
    return create_model(
        "selfy_tsm_r18",
        num_classes=3,
        num_frames=4,
        input_size=64,
        width_multiplier=0.125,
        selfy_channels=8,
        dropout=0.0,
    )


def _clip(num_frames=4, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (num_frames, size, size, 3)).astype(np.uint8)


class TestModelProbes:
    def test_selfy_model_stss_is_the_block_stss(self, tiny_selfy_model):
        from selfy_tf.viz import stss_maps

        result = stss_maps.model_stss(tiny_selfy_model, _clip())
        # res3 of a 64x64 input is 8x8; the block's transformation halves it.
        assert result.similarity.shape == (1, 4, 4, 4, 5, 9, 9)
        assert result.source == "SELFY block 'selfy'"
        assert result.stride == 16.0
        # Centre of the window compares a feature with itself: |f|^2 / (|f|^2 +
        # 1e-6), so 1 for any feature of a useful size and down to 0 for the
        # vanishing features of a random model's dead ReLUs; never outside [0, 1].
        centre = result.similarity[..., 2, 4, 4]
        assert np.all((centre >= -1e-6) & (centre <= 1.0 + 1e-5))
        assert np.mean(np.isclose(centre, 1.0, atol=1e-3)) > 0.5
        maps = stss_maps.query_maps(result.similarity, 1, 2, 3)
        np.testing.assert_array_equal(maps, result.similarity[0, 1, 2, 3])
        with pytest.raises(ValueError, match=r"Query `row` must be in \[0, 4\). Received: row=4"):
            stss_maps.query_maps(result.similarity, 0, 4, 0)

    def test_gradcam_equals_class_activation_map(self, tiny_selfy_model):
        """With global pooling and a dense head, Grad-CAM is the CAM: relu(sum_c w_c A_c)."""
        import keras
        import tensorflow as tf

        from selfy_tf.viz import gradcam

        frames = _clip(seed=1)
        probe = keras.Model(tiny_selfy_model.input, tiny_selfy_model.get_layer("layer4_1_relu").output)
        features = np.asarray(probe(frames[None].astype(np.float32)))
        kernel = np.asarray(tiny_selfy_model.get_layer("new_fc").kernel)
        cams = np.maximum(np.einsum("thwc,ck->kthw", features, kernel), 0.0)
        # A class whose map is not all zero (which one depends on the random init).
        class_index = int(np.argmax(cams.reshape(3, -1).max(axis=1)))
        cam = cams[class_index]
        assert cam.max() > 0
        cam = tf.image.resize(cam[..., None], (64, 64), method="bilinear").numpy()[..., 0]
        cam /= cam.max()
        result = gradcam.grad_cam(tiny_selfy_model, frames, class_index=class_index)
        assert result.layer_name == "layer4_1_relu"
        assert result.maps.shape == (4, 64, 64)
        np.testing.assert_allclose(result.maps, cam, atol=1e-4)
        assert result.probabilities.shape == (3,)
        np.testing.assert_allclose(result.probabilities.sum(), 1.0, rtol=1e-5)
        with pytest.raises(ValueError, match=r"`class_index` must be in \[0, 3\). Received: class_index=3"):
            gradcam.grad_cam(tiny_selfy_model, frames, class_index=3)


class TestReport:
    def test_report_escapes_text_and_links_images_relatively(self, tmp_path):
        report = HTMLReport("Demo <1>")
        report.add_heading("Results")
        report.add_table(["model", "top-1"], [["a&b", "50.0 %"]])
        image = tmp_path / "figures" / "plot.png"
        image.parent.mkdir()
        image.write_bytes(b"png")
        report.add_image(str(image), "a plot", base_dir=str(tmp_path))
        path = report.write(str(tmp_path / "report.html"))
        text = open(path, encoding="utf-8").read()
        assert "<h1>Demo &lt;1&gt;</h1>" in text
        assert "<td>a&amp;b</td>" in text
        assert 'src="figures/plot.png"' in text
        with pytest.raises(ValueError, match=r"Table row 0 has 1 cells; the table has 2 columns"):
            report.add_table(["a", "b"], [["only one"]])


class TestVizCLI:
    def test_viz_writes_its_files(self, tmp_path, tiny_selfy_model, capsys):
        from selfy_cli.main import main
        from selfy_tf.datasets import synthetic_motion

        model_path = tmp_path / "model.keras"
        tiny_selfy_model.save(model_path)
        (tmp_path / "labels.txt").write_text("left\nright\nstill\n")
        video = synthetic_motion.write_video(
            str(tmp_path / "clip.mp4"),
            synthetic_motion.generate_clip(0, np.random.default_rng(0), num_frames=8, size=80),
        )
        out = tmp_path / "viz"
        status = main(["viz", video, "--model", str(model_path), "--out", str(out), "--query", "1,2,2"])
        assert status == 0
        for name in (
            "stss_query.png", "motion_field.png", "motion_field.gif",
            "gradcam.png", "gradcam.gif", "prediction.json",
        ):
            assert (out / name).stat().st_size > 0, name
        prediction = json.loads((out / "prediction.json").read_text())
        assert prediction["query"] == [1, 2, 2]
        assert prediction["top_k"][0]["label"] in ("left", "right", "still")
        assert prediction["top_k"][0]["label"] in capsys.readouterr().out

    def test_viz_missing_model_is_an_error(self, tmp_path, capsys):
        from selfy_cli.main import main

        status = main(["viz", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "none.keras")])
        assert status == 1
        assert "No model at" in capsys.readouterr().err
