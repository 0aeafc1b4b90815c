"""`selfy demo`: settings, claims, summary table, and the quick run end to end."""

import json
import os

import numpy as np
import pytest

from selfy_cli.demo import format_summary_table, full_settings, quick_settings
from selfy_cli.demo.pipeline import check_claims, summarize_runs, training_overrides


def _run(model, seed, top1):
    return {
        "model": model,
        "seed": seed,
        "top1": top1,
        "mean_class_accuracy": top1,
        "train_seconds": 10.0,
        "confusion_matrix": [[1, 0], [0, 1]],
        "run_dir": f"runs/{model}-seed{seed}",
    }


class TestDemoBasic:
    def test_full_settings_use_three_seeds_and_all_models(self):
        settings = full_settings()
        assert settings.seeds == (0, 1, 2)
        assert settings.models == ("tsn_r18", "tsm_r18", "selfy_tsm_r18")
        assert settings.num_validation % settings.batch_size == 0

    def test_with_num_seeds(self):
        assert quick_settings().with_num_seeds(2).seeds == (0, 1)
        with pytest.raises(ValueError, match=r"`num_seeds` must be at least 1. Received: num_seeds=0"):
            quick_settings().with_num_seeds(0)

    @pytest.mark.parametrize("model_name", ["tsn_r18", "selfy_tsm_r18"])
    def test_overrides_make_a_valid_trainer_config(self, model_name):
        import trainer
        from trainer.configs import validate

        settings = full_settings()
        config = trainer.apply_overrides(
            trainer.get_preset("tiny_cpu"), training_overrides(settings, model_name, seed=2)
        )
        validate(config)
        assert config.model.name == model_name
        assert config.model.num_classes == len(settings.classes)
        assert config.model.selfy_channels == (16 if model_name.startswith("selfy") else None)
        # left/right and clockwise/counter-clockwise are never flipped.
        assert config.data.no_flip_classes == (0, 1, 4, 5)
        # Frames are stored at the input size: the evaluation view keeps them whole.
        assert config.data.eval_size == (settings.frame_size, settings.frame_size)
        assert config.train.seed == 2

    def test_causal_overrides_train_the_causal_model_on_stream_frames(self):
        import trainer
        from trainer.configs import validate

        settings = quick_settings()
        assert settings.causal_model == "selfy_tsm_r18"
        config = trainer.apply_overrides(
            trainer.get_preset("tiny_cpu"),
            training_overrides(settings, settings.causal_model, seed=0, causal=True),
        )
        validate(config)
        assert config.model.causal is True and config.data.frame_stride == 1
        offline = trainer.apply_overrides(
            trainer.get_preset("tiny_cpu"), training_overrides(settings, settings.causal_model, seed=0)
        )
        assert not offline.model.causal and offline.data.frame_stride == 0

    def test_first_k_frames_repeat_the_last_seen_frame(self):
        from selfy_cli.demo.early_recognition import first_k_frames_clips

        clips = np.random.default_rng(0).integers(0, 256, (2, 5, 3, 3, 3), dtype=np.uint8)
        for num_seen in range(1, 6):
            expected = clips.copy()
            for frame in range(num_seen, 5):
                expected[:, frame] = clips[:, num_seen - 1]
            np.testing.assert_array_equal(first_k_frames_clips(clips, num_seen), expected)
        with pytest.raises(ValueError, match=r"`num_seen` must be in \[1, 5\]. Received: num_seen=0"):
            first_k_frames_clips(clips, 0)

    def test_visualized_clips_are_the_dataset_clips(self):
        from selfy_cli.demo.pipeline import _pick_visualized_clips, validation_clips
        from selfy_tf.datasets import synthetic_motion

        settings = quick_settings()
        indices = _pick_visualized_clips(settings)
        labels = synthetic_motion.split_labels(
            settings.num_validation, settings.dataset_seed, "validation", len(settings.classes)
        )
        for index, (_, label, media_id) in zip(indices, validation_clips(settings, indices)):
            assert label == labels[index]
            assert media_id == f"validation-{index:06d}"

    def test_summary_mean_std_and_claims(self):
        runs = [
            _run("tsn_r18", 0, 0.10), _run("tsn_r18", 1, 0.14),
            _run("tsm_r18", 0, 0.50), _run("tsm_r18", 1, 0.60),
            _run("selfy_tsm_r18", 0, 0.80), _run("selfy_tsm_r18", 1, 0.70),
        ]
        models = summarize_runs(runs, full_settings())
        assert models["tsn_r18"]["top1_mean"] == pytest.approx(0.12)
        assert models["tsm_r18"]["top1_std"] == pytest.approx(0.05)
        assert models["selfy_tsm_r18"]["confusion_matrix"] == [[2, 0], [0, 2]]
        assert check_claims(models, chance=0.1) == {
            "selfy_ge_tsm": True, "tsm_gt_tsn": True, "tsn_near_chance": True
        }
        models["tsn_r18"]["top1_mean"] = 0.55
        assert check_claims(models, chance=0.1) == {
            "selfy_ge_tsm": True, "tsm_gt_tsn": False, "tsn_near_chance": False
        }
        for entry in models.values():
            entry["params"] = 1_500_000
        table = format_summary_table(
            {"models": models, "chance": 0.1, "settings": {"seeds": [0, 1], "num_validation": 300}}
        )
        assert "selfy_tsm_r18  1,500,000" in table
        assert "75.0 ± 5.0" in table
        assert "chance: 10.0 %" in table


@pytest.mark.slow
class TestDemoEndToEnd:
    def test_quick_demo_writes_report_and_results(self, tmp_path, capsys):
        from selfy_cli.main import main

        out = tmp_path / "demo_out"
        assert main(["demo", "--quick", "--out", str(out)]) == 0
        stdout = capsys.readouterr().out
        assert "selfy_tsm_r18" in stdout and "report:" in stdout
        # The summary alone: Keras's epoch lines go to stderr.
        assert "step - " not in stdout and "/step" not in stdout and "loss" not in stdout
        assert "quick run: a path check" in stdout

        results = json.loads((out / "results.json").read_text())
        assert set(results["models"]) == {"tsn_r18", "tsm_r18", "selfy_tsm_r18", "selfy_tsm_r18_causal"}
        for entry in results["models"].values():
            assert len(entry["top1"]) == 1 and 0.0 <= entry["top1_mean"] <= 1.0
            assert os.path.isfile(os.path.join(entry["run_dirs"][0], "checkpoints", "best.keras"))
        assert results["chance"] == pytest.approx(0.1)
        assert set(results["claims"]) == {"selfy_ge_tsm", "tsm_gt_tsn", "tsn_near_chance"}
        prediction = results["prediction"]
        assert os.path.isfile(os.path.join(prediction["export_path"], "saved_model.pb"))
        assert prediction["top_k"][0]["label"] in results["settings"]["classes"]

        html = (out / "report.html").read_text()
        assert "This was the quick path check" in html and "does not hold" not in html
        for figure in ("figures/accuracy.png", "figures/training_curves.png", "stss_query.png",
                       "pixel_motion_field.png", "gradcam.png", "confusion_selfy_tsm_r18.png"):
            assert figure in html, figure
        for path in [results["figures"]["accuracy"], results["figures"]["training_curves"]]:
            assert os.path.getsize(path) > 0
        clip = results["figures"]["clips"][0]
        for path in clip["model"]["files"].values():
            assert os.path.getsize(path) > 0

        # Early recognition: a curve per model over k = 1 .. T frames seen.
        early = results["early_recognition"]
        num_frames = results["settings"]["num_frames"]
        assert early["frames_seen"] == list(range(1, num_frames + 1))
        assert set(early["models"]) == set(results["models"])
        for name, curve in early["models"].items():
            assert curve["kind"] == ("stream" if name == "selfy_tsm_r18_causal" else "offline")
            assert len(curve["top1"]) == num_frames and all(0.0 <= value <= 1.0 for value in curve["top1"])
            # After all T frames, each curve is the model's clip top-1 as
            # `trainer.evaluate` measured it on the same clips; for the causal
            # model the mean of its T step logits is its clip logits.
            assert curve["top1"][-1] == pytest.approx(results["models"][name]["top1"][0])
        causal = early["models"]["selfy_tsm_r18_causal"]
        assert causal["clip_top1"] == pytest.approx(results["models"]["selfy_tsm_r18_causal"]["top1"][0])
        assert causal["max_relative_difference"] <= 1e-5
        assert "figures/early_recognition.png" in html and "Early recognition" in html
        assert os.path.getsize(results["figures"]["early_recognition"]) > 0


def test_training_curves_have_markers(tmp_path, monkeypatch):
    # A one-epoch run is a single point: without markers its curve is invisible.
    from selfy_tf.viz import plots

    drawn = []
    monkeypatch.setattr(plots, "_save_figure", lambda figure, path: drawn.append(figure) or path)
    plots.plot_training_curves({"a": {"loss": [1.0]}, "b": {"loss": [0.5, 0.4]}}, str(tmp_path / "c.png"), ["loss"])
    lines = drawn[0].axes[0].lines
    assert [len(line.get_xdata()) for line in lines] == [1, 2]
    assert all(line.get_marker() not in (None, "None", "", " ") for line in lines)


def test_early_recognition_plot_draws_each_curve_in_percent(tmp_path, monkeypatch):
    from selfy_tf.viz import plots

    drawn = []
    monkeypatch.setattr(plots, "_save_figure", lambda figure, path: drawn.append(figure) or path)
    curves = {"tsm": [0.1, 0.5, 0.9], "tsm_causal": [0.3, 0.6, 0.8]}
    plots.plot_top1_by_frames_seen(curves, str(tmp_path / "e.png"), streams=["tsm_causal"], chance=0.1)
    offline, causal, chance = drawn[0].axes[0].lines
    np.testing.assert_allclose(offline.get_ydata(), [10.0, 50.0, 90.0])
    np.testing.assert_allclose(causal.get_ydata(), [30.0, 60.0, 80.0])
    assert list(causal.get_xdata()) == [1, 2, 3]
    assert (offline.get_linestyle(), causal.get_linestyle()) == ("--", "-")
    assert (offline.get_label(), causal.get_label()) == ("tsm (offline)", "tsm_causal (stream)")
    np.testing.assert_allclose(chance.get_ydata(), [10.0, 10.0])
