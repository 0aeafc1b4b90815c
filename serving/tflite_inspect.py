"""Inspect a TFLite flatbuffer: size, operators, Flex check, int8 check, per-op latency.

`inspect_model` builds the report that `selfy tflite-inspect` prints:

- size of the flatbuffer;
- the operators in execution order and their counts by type, read from the
  flatbuffer itself (not from the interpreter, whose execution plan shows
  delegate nodes instead of the ops they replace);
- Flex (Select-TF-ops) and other custom ops, which must be absent: the LiteRT
  wheels cannot run them;
- the convolution / matrix-product ops whose inputs are not int8 (for a
  full-integer model this list must be empty);
- per-op latency. The Python LiteRT interpreter has no op profiler, so each
  operator is cut out into a one-op model, fed the tensors it receives in a
  real run of the whole model, and timed alone with the same thread count.
  Isolated ops miss the fusion and cache sharing of a whole-model run, so the
  per-op times add up to roughly, not exactly, the whole-model time (both
  are reported).

Example:

```python
from serving import tflite_inspect

report = tflite_inspect.inspect_model("model.tflite", num_threads=2)
print(report["op_counts"], report["invoke_ms"])
```
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Ops that do the multiply-adds; in a full-integer model they take int8 inputs.
COMPUTE_OPS = (
    "CONV_2D",
    "CONV_3D",
    "CONV_3D_TRANSPOSE",
    "DEPTHWISE_CONV_2D",
    "TRANSPOSE_CONV",
    "FULLY_CONNECTED",
    "BATCH_MATMUL",
)
FLEX_PREFIX = "Flex"
DEFAULT_NUM_THREADS = 2
# Bytes 4..8 of every TFLite flatbuffer.
TFLITE_FILE_IDENTIFIER = b"TFL3"
DEFAULT_NUM_RUNS = 5


@dataclasses.dataclass(frozen=True)
class OperatorInfo:
    """One operator of subgraph 0.

    Attributes:
        index: position in the execution order.
        name: builtin op name (`"CONV_2D"`) or custom op code (`"FlexConv3D"`).
        custom: whether the op is a custom op (Flex ops are custom ops).
        inputs: tensor indices of the inputs (-1 for an omitted optional one).
        outputs: tensor indices of the outputs.
        input_types: type names of the inputs (`"INT8"`, `"FLOAT32"`, ...).
        output_types: type names of the outputs.
        output_shapes: shapes of the outputs.
    """

    index: int
    name: str
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _flatbuffer_utils():
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils


def read_model_bytes(model: str | bytes | os.PathLike) -> bytes:
    """The flatbuffer bytes of `model` (bytes, or a `.tflite` path).

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the bytes are not a TFLite flatbuffer.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        source = "model bytes"
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        with open(path, "rb") as handle:
            data = handle.read()
        source = path
    if len(data) < 8 or data[4:8] != TFLITE_FILE_IDENTIFIER:
        raise ValueError(
            f"{source} is not a TFLite flatbuffer (expected the file identifier "
            f"'TFL3' at bytes 4..8, got {data[4:8]!r})."
        )
    return data


@functools.lru_cache(maxsize=None)
def _enum_names(enum: str) -> dict[int, str]:
    """Value -> name of a schema enum, e.g. `"TensorType"` or `"BuiltinOperator"`."""
    return {
        value: name
        for name, value in vars(getattr(_schema(), enum)).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def _model_object(model_bytes: bytes):
    return _flatbuffer_utils().convert_bytearray_to_object(bytearray(model_bytes))


def _operator_name(model_object, opcode_index: int) -> tuple[str, bool]:
    code = model_object.operatorCodes[opcode_index]
    builtin = _flatbuffer_utils().get_builtin_code_from_operator_code(code)
    if builtin == _schema().BuiltinOperator.CUSTOM:
        custom = code.customCode
        if isinstance(custom, bytes):
            custom = custom.decode("utf-8", "replace")
        return str(custom), True
    return _enum_names("BuiltinOperator").get(builtin, f"BUILTIN_{builtin}"), False


def list_operators(model: str | bytes | os.PathLike) -> list[OperatorInfo]:
    """The operators of the main subgraph in execution order.

    Args:
        model: flatbuffer bytes or a `.tflite` path.

    Returns:
        One `OperatorInfo` per operator.
    """
    model_object = _model_object(read_model_bytes(model))
    subgraph = model_object.subgraphs[0]
    type_names = _enum_names("TensorType")

    def describe(indices) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
        types, shapes = [], []
        for index in indices:
            if index < 0:
                types.append("NONE")
                shapes.append(())
                continue
            tensor = subgraph.tensors[index]
            types.append(type_names.get(tensor.type, str(tensor.type)))
            shapes.append(tuple(int(size) for size in (tensor.shape if tensor.shape is not None else ())))
        return tuple(types), tuple(shapes)

    operators = []
    for position, operator in enumerate(subgraph.operators or []):
        name, custom = _operator_name(model_object, operator.opcodeIndex)
        inputs = tuple(int(index) for index in (operator.inputs if operator.inputs is not None else ()))
        outputs = tuple(int(index) for index in (operator.outputs if operator.outputs is not None else ()))
        input_types, _ = describe(inputs)
        output_types, output_shapes = describe(outputs)
        operators.append(
            OperatorInfo(
                position, name, custom, inputs, outputs, input_types, output_types, output_shapes
            )
        )
    return operators


def op_counts(operators: Sequence[OperatorInfo]) -> dict[str, int]:
    """`{op name: count}`, most frequent first."""
    return dict(collections.Counter(op.name for op in operators).most_common())


def flex_ops(operators: Sequence[OperatorInfo]) -> list[str]:
    """Sorted names of the custom ops (Flex ops included): empty for a builtins-only model."""
    return sorted({op.name for op in operators if op.custom})


def check_builtin_only(model: str | bytes | os.PathLike) -> None:
    """Raises a ValueError naming the Flex / custom ops of `model`, if any."""
    custom = flex_ops(list_operators(model))
    if custom:
        flex = [name for name in custom if name.startswith(FLEX_PREFIX)]
        raise ValueError(
            f"The TFLite model needs non-builtin ops {custom}"
            + (f" (Select-TF-ops / Flex: {flex})" if flex else "")
            + ", which the LiteRT pip wheels cannot run. Express them with "
            "builtin ops (e.g. the STSS `matmul` backend, 2-D convolutions)."
        )


def non_int8_compute_ops(operators: Sequence[OperatorInfo]) -> list[OperatorInfo]:
    """Convolution / matrix-product ops whose activation or weight input is not int8.

    Only the first two inputs are checked (the bias of an int8 convolution
    is int32 by design).
    """
    offenders = []
    for op in operators:
        if op.name in COMPUTE_OPS and any(
            input_type != "INT8" for input_type in op.input_types[:2]
        ):
            offenders.append(op)
    return offenders


def _single_op_model(model_object, operator_index: int) -> tuple[bytes, list[int], list[int]]:
    """Cuts operator `operator_index` of subgraph 0 out into a one-op model.

    Returns:
        `(flatbuffer, original indices of its inputs, original indices of
        its outputs)`. Constant inputs (with data) stay constants.
    """
    schema = _schema()
    subgraph = model_object.subgraphs[0]
    operator = subgraph.operators[operator_index]
    buffers = [schema.BufferT()]
    tensor_map: dict[int, int] = {}
    tensors = []
    feed = []

    def add_tensor(index: int) -> int:
        if index < 0:
            return index
        if index in tensor_map:
            return tensor_map[index]
        original = subgraph.tensors[index]
        tensor = schema.TensorT()
        for field, value in vars(original).items():
            setattr(tensor, field, value)
        data = model_object.buffers[original.buffer].data if original.buffer else None
        if data is not None and len(data):
            buffers.append(model_object.buffers[original.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensor_map[index] = len(tensors)
        tensors.append(tensor)
        return tensor_map[index]

    inputs = [add_tensor(int(index)) for index in operator.inputs]
    for original_index, new_index in zip(operator.inputs, inputs):
        if new_index >= 0 and tensors[new_index].buffer == 0 and int(original_index) not in feed:
            feed.append(int(original_index))
    outputs = [add_tensor(int(index)) for index in operator.outputs]
    intermediates = (
        [add_tensor(int(index)) for index in operator.intermediates]
        if operator.intermediates is not None
        else None
    )
    new_operator = schema.OperatorT()
    for field, value in vars(operator).items():
        setattr(new_operator, field, value)
    new_operator.inputs = inputs
    new_operator.outputs = outputs
    new_operator.intermediates = intermediates

    new_subgraph = schema.SubGraphT()
    new_subgraph.tensors = tensors
    new_subgraph.operators = [new_operator]
    new_subgraph.inputs = [tensor_map[index] for index in feed]
    new_subgraph.outputs = outputs
    new_subgraph.name = "single_op"

    new_model = schema.ModelT()
    new_model.version = model_object.version
    new_model.operatorCodes = model_object.operatorCodes
    new_model.subgraphs = [new_subgraph]
    new_model.buffers = buffers
    new_model.description = "single op"
    data = _flatbuffer_utils().convert_object_to_bytearray(new_model)
    return bytes(data), feed, [int(index) for index in operator.outputs]


def _interpreter(model_bytes: bytes, num_threads: int, **kwargs):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_bytes, num_threads=num_threads, **kwargs)


def _example_inputs(interpreter, seed: int = 0) -> dict[str, np.ndarray]:
    runner = interpreter.get_signature_runner()
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, details in runner.get_input_details().items():
        dtype = np.dtype(details["dtype"])
        shape = tuple(int(size) for size in details["shape"])
        if dtype == np.uint8:
            inputs[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif np.issubdtype(dtype, np.integer):
            inputs[name] = rng.integers(0, 128, shape).astype(dtype)
        else:
            inputs[name] = rng.uniform(0.0, 255.0, shape).astype(dtype)
    return inputs


def time_invoke(
    model: str | bytes | os.PathLike,
    inputs: dict[str, np.ndarray] | None = None,
    num_threads: int = DEFAULT_NUM_THREADS,
    num_runs: int = DEFAULT_NUM_RUNS,
    num_warmup: int = 1,
) -> dict[str, float]:
    """Whole-model latency through the signature runner.

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        inputs: signature inputs; default random uint8 / float frames.
        num_threads: interpreter threads.
        num_runs: timed runs (after `num_warmup` untimed ones).
        num_warmup: untimed runs first.

    Returns:
        `{"median_ms", "mean_ms", "min_ms"}`.
    """
    interpreter = _interpreter(read_model_bytes(model), num_threads)
    runner = interpreter.get_signature_runner()
    inputs = inputs if inputs is not None else _example_inputs(interpreter)
    for _ in range(num_warmup):
        runner(**inputs)
    times = []
    for _ in range(num_runs):
        start = time.perf_counter()
        runner(**inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": float(np.median(times)),
        "mean_ms": float(np.mean(times)),
        "min_ms": float(np.min(times)),
    }


def per_op_latency(
    model: str | bytes | os.PathLike,
    inputs: dict[str, np.ndarray] | None = None,
    num_threads: int = DEFAULT_NUM_THREADS,
    num_runs: int = DEFAULT_NUM_RUNS,
) -> list[dict[str, Any]]:
    """Latency of every operator, each timed alone on the tensors of a real run.

    The whole model runs once with every intermediate tensor kept (no
    delegate), then each operator is cut out into a one-op model, fed the
    tensors it received, and timed (median of `num_runs` after one untimed
    run).

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        inputs: signature inputs for the recording run; default random.
        num_threads: interpreter threads for the timed one-op models.
        num_runs: timed runs per op.

    Returns:
        One dict per operator in execution order: `index`, `op`,
        `output_shape`, `output_type`, `latency_ms`.
    """
    model_bytes = read_model_bytes(model)
    from ai_edge_litert.interpreter import OpResolverType

    # Builtin kernels only, so that every intermediate tensor is computed
    # and kept (a delegate would compute its partition internally).
    recorder = _interpreter(
        model_bytes,
        1,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = recorder.get_signature_runner()
    runner(**(inputs if inputs is not None else _example_inputs(recorder)))
    model_object = _model_object(model_bytes)
    operators = list_operators(model_bytes)
    results = []
    for op in operators:
        entry = {
            "index": op.index,
            "op": op.name,
            "output_shape": list(op.output_shapes[0]) if op.output_shapes else [],
            "output_type": op.output_types[0] if op.output_types else "",
        }
        try:
            single, feed, _ = _single_op_model(model_object, op.index)
            interpreter = _interpreter(single, num_threads)
            interpreter.allocate_tensors()
            input_details = interpreter.get_input_details()
            for detail, original in zip(input_details, feed):
                interpreter.set_tensor(detail["index"], recorder.get_tensor(original))
            interpreter.invoke()
            times = []
            for _ in range(num_runs):
                start = time.perf_counter()
                interpreter.invoke()
                times.append((time.perf_counter() - start) * 1e3)
            entry["latency_ms"] = float(np.median(times))
        except (RuntimeError, ValueError) as error:
            logger.warning("could not time op %d (%s) alone: %s", op.index, op.name, error)
            entry["latency_ms"] = None
            entry["error"] = str(error)
        results.append(entry)
    return results


def inspect_model(
    model: str | bytes | os.PathLike,
    num_threads: int = DEFAULT_NUM_THREADS,
    num_runs: int = DEFAULT_NUM_RUNS,
    profile: bool = True,
) -> dict[str, Any]:
    """The full report: size, ops, Flex check, int8 check, latency.

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        num_threads: interpreter threads for the timings.
        num_runs: timed runs (whole model and each op).
        profile: also time the model and each op (slower).

    Returns:
        A JSON-serialisable dict: `size_bytes`, `size_mb`, `num_ops`,
        `op_counts`, `flex_ops` (must be empty), `non_int8_compute_ops`,
        `inputs`, `outputs` (signature names, shapes, dtypes) and, with
        `profile`, `num_threads`, `invoke_ms` (median whole-model latency),
        `per_op` (see `per_op_latency`), `per_op_total_ms` and
        `latency_by_op_ms` (summed per op type, largest first).
    """
    model_bytes = read_model_bytes(model)
    operators = list_operators(model_bytes)
    interpreter = _interpreter(model_bytes, num_threads)
    runner = interpreter.get_signature_runner()

    def signature_details(details: dict) -> dict:
        return {
            name: {
                "shape": [int(size) for size in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
            }
            for name, detail in details.items()
        }

    report: dict[str, Any] = {
        "size_bytes": len(model_bytes),
        "size_mb": round(len(model_bytes) / 2**20, 3),
        "signatures": sorted(interpreter.get_signature_list()),
        "inputs": signature_details(runner.get_input_details()),
        "outputs": signature_details(runner.get_output_details()),
        "num_ops": len(operators),
        "op_counts": op_counts(operators),
        "flex_ops": flex_ops(operators),
        "non_int8_compute_ops": [
            f"{op.index}:{op.name}({','.join(op.input_types[:2])})"
            for op in non_int8_compute_ops(operators)
        ],
    }
    if not profile:
        return report
    inputs = _example_inputs(interpreter)
    report["num_threads"] = int(num_threads)
    report["invoke_ms"] = round(
        time_invoke(model_bytes, inputs, num_threads, num_runs)["median_ms"], 3
    )
    per_op = per_op_latency(model_bytes, inputs, num_threads, num_runs)
    report["per_op"] = per_op
    timed = [entry for entry in per_op if entry["latency_ms"] is not None]
    report["per_op_total_ms"] = round(sum(entry["latency_ms"] for entry in timed), 3)
    by_type: dict[str, float] = collections.defaultdict(float)
    for entry in timed:
        by_type[entry["op"]] += entry["latency_ms"]
    report["latency_by_op_ms"] = {
        name: round(value, 3)
        for name, value in sorted(by_type.items(), key=lambda item: -item[1])
    }
    return report


def format_report(report: dict[str, Any], top: int = 15) -> str:
    """A human-readable summary of `inspect_model`'s report."""
    lines = [
        f"size: {report['size_mb']:.3f} MB ({report['size_bytes']} bytes)",
        f"inputs: {report['inputs']}",
        f"outputs: {report['outputs']}",
        f"ops: {report['num_ops']} "
        + ", ".join(f"{name} x{count}" for name, count in report["op_counts"].items()),
        f"flex/custom ops: {report['flex_ops'] or 'none'}",
        "non-int8 conv/matmul ops: "
        + (
            f"{len(report['non_int8_compute_ops'])}"
            if report["non_int8_compute_ops"]
            else "none"
        ),
    ]
    if "invoke_ms" in report:
        lines.append(
            f"latency ({report['num_threads']} threads): whole model "
            f"{report['invoke_ms']:.3f} ms, ops timed alone sum to "
            f"{report['per_op_total_ms']:.3f} ms"
        )
        lines.append("by op type (ms): " + ", ".join(
            f"{name} {value:.3f}" for name, value in report["latency_by_op_ms"].items()
        ))
        slowest = sorted(
            (entry for entry in report["per_op"] if entry["latency_ms"] is not None),
            key=lambda entry: -entry["latency_ms"],
        )[:top]
        lines.append(f"slowest {len(slowest)} ops:")
        for entry in slowest:
            lines.append(
                f"  #{entry['index']:4d} {entry['op']:<20s} {entry['latency_ms']:9.3f} ms  "
                f"-> {entry['output_type']} {entry['output_shape']}"
            )
    return "\n".join(lines)
