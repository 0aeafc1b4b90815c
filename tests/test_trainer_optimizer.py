"""TorchSGD against a NumPy reimplementation of torch's SGD; parameter groups; schedules.

Backend-agnostic: runs under `KERAS_BACKEND=tensorflow` and `KERAS_BACKEND=jax`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from trainer.optimizer import TorchSGD, group_policies, parameter_groups
from trainer.schedules import EpochCosineDecay, EpochStepDecay, make_schedule, scaled_learning_rate


def _numpy_torch_sgd(params, grads_per_step, lrs, lr_mults, decays, momentum, nesterov, max_norm):
    """torch.optim.SGD (param groups) after torch.nn.utils.clip_grad_norm_, in plain NumPy loops."""
    params = [p.astype(np.float64).copy() for p in params]
    buffers = [None] * len(params)
    for grads, lr in zip(grads_per_step, lrs):
        grads = [g.astype(np.float64) for g in grads]
        total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        if max_norm:
            coefficient = max_norm / (total + 1e-6)
            if coefficient < 1.0:
                grads = [g * coefficient for g in grads]
        for index, (p, g) in enumerate(zip(params, grads)):
            d_p = g + decays[index] * p
            if momentum:
                if buffers[index] is None:
                    buffers[index] = d_p.copy()
                else:
                    buffers[index] = momentum * buffers[index] + d_p
                d_p = d_p + momentum * buffers[index] if nesterov else buffers[index]
            params[index] = p - lr * lr_mults[index] * d_p
    return params


class _ListSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, values):
        self.values = list(values)

    def __call__(self, step):
        return ops.take(ops.convert_to_tensor(self.values, "float32"), ops.cast(step, "int32"))

    def get_config(self):
        return {"values": self.values}


class TestTorchSGDCorrectness:
    @pytest.mark.parametrize("nesterov", [True, False])
    @pytest.mark.parametrize("max_norm", [1.5, None])
    def test_matches_numpy_torch_reference(self, nesterov, max_norm):
        rng = np.random.default_rng(0)
        initial = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32),
                   rng.normal(size=(2,)).astype(np.float32)]
        variables = [keras.Variable(value, name=name) for value, name in zip(initial, ("kernel", "bias", "gamma"))]
        # kernel: lr x1 decay x1; bias: lr x2 no decay; gamma: lr x1 no decay.
        policies = {variables[0].path: [1.0, 1.0], variables[1].path: [2.0, 0.0], variables[2].path: [1.0, 0.0]}
        lrs = [0.1, 0.1, 0.05, 0.05, 0.01, 0.01]
        optimizer = TorchSGD(
            _ListSchedule(lrs), momentum=0.9, nesterov=nesterov, weight_decay=0.01,
            clip_global_norm=max_norm, variable_policies=policies,
        )
        steps = []
        for step in range(len(lrs)):
            # Alternate small and large gradients so clipping is both on and off.
            scale = 3.0 if step % 2 else 0.1
            grads = [(rng.normal(size=value.shape) * scale).astype(np.float32) for value in initial]
            steps.append(grads)
            optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
        expected = _numpy_torch_sgd(
            initial, steps, lrs, lr_mults=[1.0, 2.0, 1.0], decays=[0.01, 0.0, 0.0], momentum=0.9,
            nesterov=nesterov, max_norm=max_norm,
        )
        for variable, reference in zip(variables, expected):
            np.testing.assert_allclose(variable.numpy(), reference, rtol=1e-5, atol=1e-6)

    def test_decay_is_coupled_not_decoupled(self):
        # Zero gradient: torch-style L2 still moves p by lr * wd * p on step 1.
        variable = keras.Variable(np.ones((2,), np.float32), name="kernel")
        optimizer = TorchSGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.5, clip_global_norm=None)
        optimizer.apply([ops.zeros((2,))], [variable])
        # d_p = 0.5; buf = 0.5; nesterov step = 0.5 + 0.9 * 0.5 = 0.95; p = 1 - 0.1 * 0.95
        np.testing.assert_allclose(variable.numpy(), [0.905, 0.905], rtol=1e-6)

    def test_gradient_norm_is_recorded_before_clipping(self):
        variable = keras.Variable(np.zeros((2,), np.float32), name="kernel")
        optimizer = TorchSGD(0.1, weight_decay=0.0, clip_global_norm=1.0)
        optimizer.apply([ops.convert_to_tensor([3.0, 4.0])], [variable])
        assert float(optimizer.gradient_norm.numpy()) == pytest.approx(5.0)
        # Clipped to norm 1: g = (0.6, 0.8); first nesterov step = g * 1.9.
        np.testing.assert_allclose(variable.numpy(), [-0.1 * 0.6 * 1.9, -0.1 * 0.8 * 1.9], rtol=1e-5)


class TestTorchSGDBasics:
    def test_config_round_trip(self):
        optimizer = TorchSGD(0.02, momentum=0.8, nesterov=False, weight_decay=1e-4, clip_global_norm=10.0,
                             variable_policies={"a/kernel": [1.0, 1.0]})
        config = optimizer.get_config()
        assert (config["weight_decay"], config["clip_global_norm"], config["nesterov"]) == (1e-4, 10.0, False)
        restored = TorchSGD.from_config(config)
        assert restored.torch_weight_decay == 1e-4 and restored.variable_policies == {"a/kernel": [1.0, 1.0]}

    @pytest.mark.parametrize("argument", ["clipnorm", "global_clipnorm", "clipvalue"])
    def test_per_replica_clipping_is_refused(self, argument):
        with pytest.raises(ValueError, match=f"`{argument}` clips each replica's gradient before the all-reduce"):
            TorchSGD(0.1, **{argument: 1.0})

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\). Received: momentum=1.5"):
            TorchSGD(0.1, momentum=1.5)
        with pytest.raises(ValueError, match="`weight_decay` must be >= 0"):
            TorchSGD(0.1, weight_decay=-1.0)


class TestParameterGroups:
    def test_groups_follow_the_official_policy(self):
        frames = keras.Input((4, 32, 32, 3))
        x = keras.layers.Reshape((4 * 32, 32, 3))(frames)
        x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(x)
        x = keras.layers.BatchNormalization(name="bn1")(x)
        x = keras.layers.Conv2D(8, 3, name="conv2")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(6, name="hidden")(x)
        logits = keras.layers.Dense(3, name="new_fc")(x)
        model = keras.Model(frames, logits)
        groups = parameter_groups(model, classifier_lr_mult=5.0, classifier_bias_lr_mult=10.0)
        assert groups["first_conv_weight"]["paths"] == ["conv1/kernel"]
        assert groups["first_conv_bias"]["paths"] == []
        assert groups["normal_weight"]["paths"] == ["conv2/kernel", "hidden/kernel"]
        assert groups["normal_bias"]["paths"] == ["conv2/bias", "hidden/bias"]
        assert groups["bn"]["paths"] == ["bn1/gamma", "bn1/beta"]
        assert groups["classifier_weight"]["paths"] == ["new_fc/kernel"]
        assert groups["classifier_bias"]["paths"] == ["new_fc/bias"]
        policies = group_policies(groups)
        assert policies["conv2/bias"] == [2.0, 0.0]
        assert policies["bn1/gamma"] == [1.0, 0.0]
        assert policies["new_fc/kernel"] == [5.0, 1.0] and policies["new_fc/bias"] == [10.0, 0.0]
        assert len(policies) == len(model.trainable_variables)

    def test_selfy_model_variables_all_have_a_policy(self):
        from selfy_tf.models import create_model

        model = create_model("selfy_tsm_r18", num_classes=4, num_frames=4, input_size=32,
                             width_multiplier=0.125, selfy_channels=8)
        groups = parameter_groups(model)
        assigned = sum(len(group["paths"]) for group in groups.values())
        assert assigned == len(model.trainable_variables)
        assert groups["first_conv_weight"]["paths"] == ["conv1/kernel"]
        assert all("selfy" not in path for path in groups["classifier_weight"]["paths"])
        assert any(path.startswith("selfy") for path in groups["bn"]["paths"])

    def test_variable_without_policy_is_an_error(self):
        class Scale(keras.layers.Layer):
            def build(self, input_shape):
                self.factor = self.add_weight(shape=(), name="factor")

            def call(self, inputs):
                return inputs * self.factor

        inputs = keras.Input((3,))
        model = keras.Model(inputs, Scale(name="scale")(inputs))
        with pytest.raises(ValueError, match=r"`scale/factor` \(layer class Scale\) has no learning-rate"):
            parameter_groups(model)


class TestSchedules:
    def test_step_decay_per_epoch(self):
        schedule = EpochStepDecay(0.01, steps_per_epoch=10, decay_epochs=(30, 40))
        values = [float(schedule(step)) for step in (0, 299, 300, 399, 400, 499)]
        np.testing.assert_allclose(values, [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001], rtol=1e-5)

    def test_linear_warmup(self):
        schedule = EpochStepDecay(0.1, steps_per_epoch=4, decay_epochs=(), warmup_epochs=2)
        values = [float(schedule(step)) for step in range(10)]
        expected = [0.1 * min(1.0, (step + 1) / 8) for step in range(10)]
        np.testing.assert_allclose(values, expected, rtol=1e-5)

    def test_cosine(self):
        schedule = EpochCosineDecay(0.1, steps_per_epoch=10, total_epochs=4, final_lr_fraction=0.1)
        for step in (0, 10, 20, 35, 40):
            cosine = 0.5 * (1 + math.cos(math.pi * min(step / 40, 1.0)))
            assert float(schedule(step)) == pytest.approx(0.1 * (0.1 + 0.9 * cosine), rel=1e-5)

    def test_linear_scaling_and_factory(self):
        from trainer.configs import ScheduleConfig

        assert scaled_learning_rate(0.01, 64, 16) == pytest.approx(0.0025)
        schedule = make_schedule(ScheduleConfig(name="constant"), 0.3, steps_per_epoch=5, total_epochs=50)
        assert float(schedule(1000)) == pytest.approx(0.3)
        round_trip = EpochStepDecay.from_config(EpochStepDecay(0.1, 5, (1, 2)).get_config())
        assert float(round_trip(7)) == pytest.approx(0.01)
