"""SGD exactly as the official SELFY release runs it, as a Keras 3 optimizer.

The official training (PyTorch, `ops/models.py` `get_optim_policies`,
`main.py`) differs from `keras.optimizers.SGD` in three ways, and each one
changes results:

1. **Weight decay is torch-style L2**: `g <- g + wd * p` before momentum, so
   the decay passes through Nesterov momentum. Keras's
   `SGD(weight_decay=...)` is decoupled (`p <- p - lr * wd * p`), which with
   momentum 0.9 is about 10x weaker.
2. **torch's Nesterov formula**: `v <- mu * v + g; p <- p - lr * (g + mu * v)`
   with the velocity in gradient units (Keras keeps it in parameter units,
   which differs as soon as the learning rate changes).
3. **Parameter groups** (`parameter_groups`): each variable has an lr
   multiplier and a decay multiplier chosen by the kind of layer that owns
   it, as the official optimizer policy does:

   | group                | what                                  | lr x | decay x |
   |----------------------|---------------------------------------|------|---------|
   | `first_conv_weight`  | kernel of the first convolution       | 1    | 1       |
   | `first_conv_bias`    | its bias (none in our models)         | 2    | 0       |
   | `normal_weight`      | every other conv / dense kernel       | 1    | 1       |
   | `normal_bias`        | every other conv / dense bias         | 2    | 0       |
   | `bn`                 | BatchNorm gamma and beta              | 1    | 0       |
   | `classifier_weight`  | classifier kernel (`new_fc`)          | 1 (5 on Kinetics)  | 1 |
   | `classifier_bias`    | classifier bias                       | 2 (10 on Kinetics) | 0 |

   The official script trains with `--no_partialbn`, so every BN layer is in
   training mode and all BN parameters are in `bn` (with partial BN, only the
   first BN would be trained and the others frozen; we do not offer that).

Gradient clipping (torch's `clip_grad_norm_`, max norm 20) must see the
gradient of the global batch. Keras's `clipnorm` / `global_clipnorm` clip in
`BaseOptimizer.apply`, *before* the TensorFlow optimizer all-reduces the
gradients in `_backend_update_step`, i.e. each replica clips its own partial
gradient. `TorchSGD` therefore clips inside `_backend_update_step`, after the
all-reduce, and leaves Keras's own clipping off.

The update is written in `keras.ops` and runs on every Keras backend. Only
the TensorFlow all-reduce above is backend-specific; on JAX (with or without
`keras.distribution.DataParallel`) the gradients `fit` hands the optimizer
are already those of the global batch's loss, so they are clipped as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

logger = logging.getLogger(__name__)

__all__ = ["TorchSGD", "parameter_groups"]

# torch's clip_grad_norm_ divides by (norm + 1e-6).
_CLIP_EPSILON = 1e-6

_CONV_LAYERS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)


def _own_trainable_variables(layer: keras.layers.Layer) -> list:
    """Variables created by `layer` itself, not by its sub-layers."""
    return list(getattr(layer, "_trainable_variables", []))


def parameter_groups(
    model: keras.Model,
    bias_lr_mult: float = 2.0,
    classifier_lr_mult: float = 1.0,
    classifier_bias_lr_mult: float = 2.0,
    classifier_name: str = "new_fc",
) -> dict[str, dict[str, Any]]:
    """Sorts the model's trainable variables into the official parameter groups.

    Args:
        model: a built Keras model.
        bias_lr_mult: float, lr multiplier of conv / dense biases (official: 2).
        classifier_lr_mult: float, lr multiplier of the classifier kernel
            (official: 1, or 5 on Kinetics).
        classifier_bias_lr_mult: float, lr multiplier of the classifier bias
            (official: 2, or 10 on Kinetics).
        classifier_name: str, name of the classifier layer; when no layer has
            that name, the last `Dense` layer is the classifier.

    Returns:
        `{group_name: {"lr_mult": float, "decay_mult": float, "paths": [variable paths]}}`
        in the order of the table in this module's docstring.

    Raises:
        ValueError: a trainable variable belongs to a layer kind with no
            policy (the message names the variable and the layer class).
    """
    groups: dict[str, dict[str, Any]] = {
        "first_conv_weight": {"lr_mult": 1.0, "decay_mult": 1.0, "paths": []},
        "first_conv_bias": {"lr_mult": float(bias_lr_mult), "decay_mult": 0.0, "paths": []},
        "normal_weight": {"lr_mult": 1.0, "decay_mult": 1.0, "paths": []},
        "normal_bias": {"lr_mult": float(bias_lr_mult), "decay_mult": 0.0, "paths": []},
        "bn": {"lr_mult": 1.0, "decay_mult": 0.0, "paths": []},
        "classifier_weight": {"lr_mult": float(classifier_lr_mult), "decay_mult": 1.0, "paths": []},
        "classifier_bias": {"lr_mult": float(classifier_bias_lr_mult), "decay_mult": 0.0, "paths": []},
    }
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    dense_layers = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    classifier = next((layer for layer in dense_layers if layer.name == classifier_name), None)
    if classifier is None and dense_layers:
        classifier = dense_layers[-1]
    owner = {}
    for layer in layers:
        for variable in _own_trainable_variables(layer):
            owner[id(variable)] = layer

    seen_first_conv = False
    for variable in model.trainable_variables:
        layer = owner.get(id(variable))
        leaf_name = variable.path.split("/")[-1]
        is_bias = leaf_name == "bias"
        if layer is not None and isinstance(layer, _CONV_LAYERS):
            if not seen_first_conv and not is_bias:
                group = "first_conv_weight"
                first_conv_layer = layer
                seen_first_conv = True
            elif seen_first_conv and is_bias and layer is first_conv_layer:
                group = "first_conv_bias"
            else:
                group = "normal_bias" if is_bias else "normal_weight"
        elif layer is not None and layer is classifier:
            group = "classifier_bias" if is_bias else "classifier_weight"
        elif layer is not None and isinstance(layer, keras.layers.BatchNormalization):
            group = "bn"
        elif leaf_name in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"):
            group = "normal_weight"
        elif is_bias:
            group = "normal_bias"
        elif leaf_name in ("gamma", "beta"):
            group = "bn"
        else:
            layer_class = type(layer).__name__ if layer is not None else "unknown"
            raise ValueError(
                f"Trainable variable `{variable.path}` (layer class {layer_class}) has no "
                "learning-rate / weight-decay policy. Expected a convolution, dense or "
                "BatchNormalization variable, or one named kernel, bias, gamma or beta."
            )
        groups[group]["paths"].append(variable.path)
    return groups


def group_policies(groups: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """`{variable_path: [lr_mult, decay_mult]}` from `parameter_groups` output."""
    policies = {}
    for group in groups.values():
        for path in group["paths"]:
            policies[path] = [float(group["lr_mult"]), float(group["decay_mult"])]
    return policies


@keras.saving.register_keras_serializable(package="selfy")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with torch's Nesterov momentum, L2 weight decay and parameter groups.

    For each variable `p` with gradient `g` (all-reduced over replicas, then
    clipped by global norm), lr multiplier `a` and decay multiplier `d`:

        g <- g + weight_decay * d * p
        v <- momentum * v + g
        p <- p - learning_rate * a * (g + momentum * v)    (nesterov)
        p <- p - learning_rate * a * v                     (otherwise)

    which is `torch.optim.SGD(params_groups, lr, momentum, weight_decay,
    nesterov)` with `torch.nn.utils.clip_grad_norm_` before each step.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`,
            the base learning rate (before multipliers).
        momentum: float in [0, 1), default 0.9.
        nesterov: bool, default True.
        weight_decay: float, torch-style L2 coefficient, default 5e-4 (scaled
            per variable by its decay multiplier).
        clip_global_norm: float or None, default 20.0: clip the all-reduced
            gradient to this global L2 norm (torch's `clip_grad_norm_`); None
            or 0 turns clipping off.
        variable_policies: dict `{variable_path: [lr_mult, decay_mult]}`,
            e.g. from `group_policies(parameter_groups(model))`; variables
            not listed get `[1, 1]`. Default None: `[1, 1]` for all.
        name: str, default "torch_sgd".
        **kwargs: other `keras.optimizers.Optimizer` arguments
            (`loss_scale_factor`, ...). `clipnorm`, `clipvalue` and
            `global_clipnorm` are refused: they clip before the all-reduce.

    Example:

    >>> optimizer = TorchSGD(learning_rate=0.01, weight_decay=5e-4)
    >>> optimizer.momentum
    0.9
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        clip_global_norm: float | None = 20.0,
        variable_policies: dict[str, list[float]] | None = None,
        name: str = "torch_sgd",
        **kwargs: Any,
    ):
        for argument in ("clipnorm", "clipvalue", "global_clipnorm"):
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"`{argument}` clips each replica's gradient before the all-reduce. "
                    f"Use `clip_global_norm` instead. Received: {argument}={kwargs[argument]!r}."
                )
            kwargs.pop(argument, None)
        # Keras's own `weight_decay` is decoupled: keep it None and apply ours.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}.")
        if float(weight_decay) < 0.0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay!r}.")
        if clip_global_norm is not None and float(clip_global_norm) < 0.0:
            raise ValueError(
                f"`clip_global_norm` must be >= 0 or None. Received: clip_global_norm={clip_global_norm!r}."
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.torch_weight_decay = float(weight_decay)
        self.clip_global_norm = float(clip_global_norm) if clip_global_norm else None
        self.variable_policies = {
            str(path): [float(value) for value in policy] for path, policy in (variable_policies or {}).items()
        }

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []
        self._lr_mults = []
        self._decay_mults = []
        unknown = set(self.variable_policies) - {variable.path for variable in variables}
        if unknown:
            logger.warning(
                "TorchSGD: %d variable policies match no variable (e.g. %s).",
                len(unknown),
                sorted(unknown)[0],
            )
        for variable in variables:
            lr_mult, decay_mult = self.variable_policies.get(variable.path, (1.0, 1.0))
            self._lr_mults.append(float(lr_mult))
            self._decay_mults.append(float(decay_mult))
        # Last global gradient norm (before clipping), for logging.
        self.gradient_norm = self.add_variable(
            shape=(), dtype="float32", name="gradient_norm", initializer="zeros"
        )

    def _apply_weight_decay(self, variables):
        # Weight decay is applied as L2 inside `update_step`, not decoupled.
        return

    def _clip(self, grads):
        """`(clipped grads, global norm before clipping)`, as torch's `clip_grad_norm_`."""
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(gradient, "float32"))) for gradient in grads))
        if self.clip_global_norm:
            scale = ops.minimum(1.0, self.clip_global_norm / (norm + _CLIP_EPSILON))
            grads = [gradient * ops.cast(scale, gradient.dtype) for gradient in grads]
        return grads, norm

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "tensorflow":
            self._tensorflow_update_step(grads, trainable_variables, learning_rate)
            return
        grads, norm = self._clip(grads)
        for gradient, variable in zip(grads, trainable_variables):
            self.update_step(gradient, variable, learning_rate)
        self.gradient_norm.assign(norm)

    def _tensorflow_update_step(self, grads, trainable_variables, learning_rate):
        import tensorflow as tf

        trainable_variables = [
            variable.value if isinstance(variable, keras.Variable) else variable
            for variable in trainable_variables
        ]
        # Sum over replicas first (each replica's loss is already divided by
        # the number of replicas), so the norm below is the global batch's.
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        grads, norm = self._clip([gradient for gradient, _ in grads_and_vars])
        grads_and_vars = list(zip(grads, [variable for _, variable in grads_and_vars]))

        def update(distribution, grads_and_vars, learning_rate, norm):
            for gradient, variable in grads_and_vars:
                distribution.extended.update(
                    variable,
                    lambda var, grad, lr: self.update_step(grad, var, lr),
                    args=(gradient, learning_rate),
                    group=False,
                )
            distribution.extended.update(
                self.gradient_norm.value, lambda var, value: var.assign(value), args=(norm,), group=False
            )

        tf.__internal__.distribute.interim.maybe_merge_call(
            update, self._distribution_strategy, grads_and_vars, learning_rate, norm
        )

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        lr_mult = self._lr_mults[index]
        decay = self.torch_weight_decay * self._decay_mults[index]
        learning_rate = ops.cast(learning_rate, variable.dtype) * lr_mult
        gradient = ops.cast(gradient, variable.dtype)
        if decay:
            gradient = gradient + ops.cast(decay, variable.dtype) * variable
        if self.momentum:
            velocity = self.momentums[index]
            momentum = ops.cast(self.momentum, variable.dtype)
            self.assign(velocity, velocity * momentum + gradient)
            step = gradient + momentum * velocity if self.nesterov else velocity
        else:
            step = gradient
        self.assign_sub(variable, learning_rate * step)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for key in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay"):
            config.pop(key, None)
        config.update(
            {
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "weight_decay": self.torch_weight_decay,
                "clip_global_norm": self.clip_global_norm,
                "variable_policies": self.variable_policies,
            }
        )
        return config
