"""Hostile clients against `selfy serve`: what each costs the server, in one run.

    python benchmarks/bench_serving_hostile.py --results-file hostile.json
    python benchmarks/bench_serving_hostile.py --baseline-tree /path/to/older/checkout

Exports a tiny model (default `selfy_tsm_r18` at width ×0.25, 8 frames of
112², short side resized to 128), starts `selfy serve` as a subprocess and
runs, one after the other:

- `thin_*`: one request of 8 frames of 1×`--thin-width` pixels, as gRPC
  uint8 (`predict_frames`) and as REST PNG (`serving_default`): its status
  and the server's peak RSS growth (`*_peak_mb`, from `VmHWM` reset before
  the request). Without a limit each frame is resized to 128 × (128 ×
  width) floats.
- `slowloris_*`: `--rest-threads` connections that send one header byte
  every 0.5 s while a client sends good requests: `closed` (how many the
  server disconnected), `max_held_s` (longest a trickling connection was
  kept), `good_ok` / `good_sent` (good requests answered 200).
- `idle_*`: `--idle-connections` connections that send nothing, then one
  new client: `first_answer_ms` and `status`.
- `json_*`: one uint8 `predict_frames` JSON body of about `--json-mb` MB
  (`json_one_peak_mb`, `json_one_factor` = peak growth over body size),
  then three at once with `--rest-max-inflight-mb` set to one body
  (`json_three_statuses`, `json_three_peak_mb`).
- `deep_json_status`: a body nesting 700 arrays.
- `rest_rps_c<clients>`: good REST requests per second (status GETs and
  `predict_frames` on 4 frames of 112², over kept-alive connections, for
  each of `--rps-clients` for `--rps-seconds` each), the cost of the guards
  on the good path; `rps_peak_rss_mb` is the server's peak RSS meanwhile.

With `--baseline-tree DIR --rps-rounds N`, `rps_alternating` then starts
both servers at once (with the default `--rest-threads`, 128; the cases
above run with `--rest-threads`, so more clients than that get 503 in
their rps case) and measures the rps case in
N rounds, each client count on one server then the other (the order
alternating between rounds), so that a change of machine load hits both
alike: `rest_rps_rounds_c<clients>` and `baseline_rest_rps_rounds_c<clients>`
list the rounds, `rest_rps_ratio_c<clients>` is the median of the per-round
ratios now / baseline.

`--rest-backend NAME` serves this tree's server with `selfy serve
--rest-backend NAME` (the baseline keeps its default).

Each case also records the server's peak RSS while it ran
(`<case>_peak_rss_mb`, `VmHWM` reset before it). `bench_serving.py --faults
--hostile` runs the same cases through `run_cases`.

With `--baseline-tree DIR`, the same cases run against the code in DIR
(exported and served by it; keys prefixed `baseline_`), side by side on the
same machine. Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from _common import free_port, limit_threads, write_results

logger = logging.getLogger("bench_serving_hostile")

_THREADS = 2
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", default=None, help="a second checkout to compare with")
    parser.add_argument("--thin-width", type=int, default=1024, help="long side of the thin frames")
    parser.add_argument("--rest-threads", type=int, default=16)
    parser.add_argument("--rest-timeout", type=float, default=3.0)
    parser.add_argument("--idle-connections", type=int, default=300)
    parser.add_argument("--json-mb", type=float, default=8.0)
    parser.add_argument("--rps-seconds", type=float, default=5.0)
    parser.add_argument("--rps-clients", default="1,8,32,64", help="client counts of the rps case")
    parser.add_argument("--rps-rounds", type=int, default=0,
                        help="with --baseline-tree: also measure both servers' rps in this many "
                             "alternating rounds, both running at once (rps_alternating)")
    parser.add_argument("--cases", default="rps,thin,slowloris,idle,json",
                        help="comma-separated subset of the cases to run")
    parser.add_argument("--rest-backend", default=None,
                        help="`selfy serve --rest-backend` of this tree's server (not the baseline's)")
    parser.add_argument("--results-file", default=None)
    return parser.parse_args(argv)


def _start_server(tree: str, base: str, extra: list[str]) -> tuple[subprocess.Popen, int, int]:
    rest_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "selfy_cli.main", "serve", base, "--name", "selfy",
               "--rest-port", str(rest_port), "--grpc-port", str(grpc_port), "--no-batching", *extra]
    environment = {**os.environ, "PYTHONPATH": tree, "TF_NUM_INTRAOP_THREADS": str(_THREADS),
                   "TF_NUM_INTEROP_THREADS": str(_THREADS), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=tree, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"selfy serve exited with status {process.returncode}")
        try:
            if _http(rest_port, "GET", "/v1/models/selfy", timeout_s=5)[0] == 200:
                return process, rest_port, grpc_port
        except OSError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError("selfy serve did not become available in 300 s")


def _http(port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 120):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _reset_peak(pid: int) -> float:
    """Resets the process's peak RSS to its current RSS; returns that RSS in MB."""
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _peak_growth(pid: int, run) -> tuple[object, float]:
    before = _reset_peak(pid)
    outcome = run()
    return outcome, round(_status_mb(pid, "VmHWM") - before, 1)


def _thin_cases(process, rest_port, grpc_port, width: int, results: dict, prefix: str) -> None:
    import grpc
    import tensorflow as tf
    from PIL import Image
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    frames = np.zeros((1, 8, 1, width, 3), np.uint8)

    def grpc_thin():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "selfy"
        request.model_spec.signature_name = "predict_frames"
        request.inputs["frames"].CopyFrom(tf.make_tensor_proto(frames))
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=300)
            return "OK"
        except grpc.RpcError as error:
            return error.code().name
        finally:
            channel.close()

    buffer = io.BytesIO()
    Image.fromarray(frames[0, 0]).save(buffer, format="PNG")
    import base64

    frame = base64.b64encode(buffer.getvalue()).decode("ascii")
    body = json.dumps({"inputs": {"frames_jpeg": [[{"b64": frame}] * 8]}}).encode("utf-8")
    # REST first: TensorFlow keeps freed memory in its allocator, so the
    # larger gRPC case after it still shows its own growth.
    for name, run in (("rest_png", lambda: _http(rest_port, "POST", "/v1/models/selfy:predict", body)[0]),
                      ("grpc_uint8", grpc_thin)):
        status, peak = _peak_growth(process.pid, run)
        results[f"{prefix}thin_{name}_status"] = status
        results[f"{prefix}thin_{name}_peak_mb"] = peak
    results[f"{prefix}thin_request_bytes"] = int(frames.nbytes)


def _slowloris(rest_port: int, num_connections: int, timeout_s: float, results: dict, prefix: str) -> None:
    stop = threading.Event()
    held_s, closed = [], []

    def trickle() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", rest_port), timeout=5) as connection:
            connection.sendall(b"GET /v1/models/selfy HTTP/1.1\r\n")
            while not stop.is_set():
                try:
                    connection.sendall(b"X")
                    connection.settimeout(0.5)
                    if connection.recv(4096) == b"":
                        closed.append(1)
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed.append(1)
                    break
        held_s.append(time.monotonic() - started)

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(num_connections)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    sent = answered = 0
    end = time.monotonic() + 4 * timeout_s
    while time.monotonic() < end:
        sent += 1
        try:
            answered += _http(rest_port, "GET", "/v1/models/selfy", timeout_s=5)[0] == 200
        except OSError:
            pass
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    results[f"{prefix}slowloris_connections"] = num_connections
    results[f"{prefix}slowloris_closed"] = len(closed)
    results[f"{prefix}slowloris_max_held_s"] = round(max(held_s, default=0.0), 1)
    results[f"{prefix}slowloris_good_ok"] = answered
    results[f"{prefix}slowloris_good_sent"] = sent


def _idle_flood(rest_port: int, num_connections: int, results: dict, prefix: str) -> None:
    idle = []
    try:
        for _ in range(num_connections):
            idle.append(socket.create_connection(("127.0.0.1", rest_port), timeout=5))
        started = time.monotonic()
        try:
            status = _http(rest_port, "GET", "/v1/models/selfy", timeout_s=60)[0]
        except OSError as error:
            status = type(error).__name__
        results[f"{prefix}idle_first_answer_ms"] = round((time.monotonic() - started) * 1000, 1)
        results[f"{prefix}idle_status"] = status
    finally:
        for connection in idle:
            connection.close()


def _json_body(megabytes: float) -> bytes:
    # "255, " is 5 bytes: frames of 112² x 3 channels, as many as fit.
    num_frames = max(1, int(megabytes * 1e6 / 5 / (112 * 112 * 3)))
    frames = np.full((1, num_frames, 112, 112, 3), 255, np.uint8)
    return json.dumps({"signature_name": "predict_frames", "inputs": {"frames": frames.tolist()}}).encode()


def _json_cases(process, rest_port: int, body: bytes, results: dict, prefix: str) -> None:
    results[f"{prefix}json_body_mb"] = round(len(body) / 1e6, 1)
    path = "/v1/models/selfy:predict"
    status, peak = _peak_growth(process.pid, lambda: _http(rest_port, "POST", path, body)[0])
    results[f"{prefix}json_one_status"] = status
    results[f"{prefix}json_one_peak_mb"] = peak
    results[f"{prefix}json_one_factor"] = round(peak * (1 << 20) / len(body), 1)

    def three():
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            return sorted(pool.map(lambda _: _http(rest_port, "POST", path, body)[0], range(3)))

    statuses, peak = _peak_growth(process.pid, three)
    results[f"{prefix}json_three_statuses"] = statuses
    results[f"{prefix}json_three_peak_mb"] = peak
    depth = 700
    deep = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    results[f"{prefix}deep_json_status"] = _http(rest_port, "POST", path, deep)[0]


def _good_rps(rest_port: int, num_clients: int, seconds: float) -> float:
    frames = np.zeros((1, 4, 112, 112, 3), np.uint8).tolist()
    predict = json.dumps({"signature_name": "predict_frames", "inputs": {"frames": frames}}).encode()
    end = time.monotonic() + seconds

    def client(_) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
        count = 0
        try:
            while time.monotonic() < end:
                for method, path, body in (("GET", "/v1/models/selfy", None),
                                           ("POST", "/v1/models/selfy:predict", predict)):
                    connection.request(method, path, body=body)
                    response = connection.getresponse()
                    response.read()
                    count += response.status == 200
        finally:
            connection.close()
        return count

    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        return round(sum(pool.map(client, range(num_clients))) / seconds, 1)


def run_cases(tree: str, base: str, args, results: dict, prefix: str) -> None:
    """Runs `args.cases` against `selfy serve` from `tree` on the export at `base`."""
    body = _json_body(args.json_mb)
    body_mb = len(body) / (1 << 20) + 0.1
    extra = ["--rest-threads", str(args.rest_threads), "--rest-timeout", str(args.rest_timeout)]
    if args.rest_backend and not prefix:
        extra += ["--rest-backend", args.rest_backend]
    process, rest_port, grpc_port = _start_server(tree, base, extra)
    try:
        results[f"{prefix}rss_start_mb"] = round(_status_mb(process.pid, "VmRSS"), 1)
        steps = (
            ("rps", lambda: results.update({
                f"{prefix}rest_rps_c{clients}": _good_rps(rest_port, clients, args.rps_seconds)
                for clients in map(int, args.rps_clients.split(","))
            })),
            ("thin", lambda: _thin_cases(process, rest_port, grpc_port, args.thin_width, results, prefix)),
            ("slowloris", lambda: _slowloris(rest_port, args.rest_threads, args.rest_timeout, results, prefix)),
            ("idle", lambda: _idle_flood(rest_port, args.idle_connections, results, prefix)),
        )
        for name, step in steps:
            if name not in args.cases.split(","):
                continue
            try:
                _reset_peak(process.pid)
                step()
                results[f"{prefix}{name}_peak_rss_mb"] = round(_status_mb(process.pid, "VmHWM"), 1)
            except Exception as error:  # record and go on
                results[f"{prefix}{name}_error"] = repr(error)
            logger.info("%s%s done", prefix, name)
    finally:
        process.terminate()
        process.wait(timeout=60)
    if "json" not in args.cases.split(","):
        return
    # A server whose body budget is one body (where the tree has the flag).
    budget = ["--max-request-mb", f"{body_mb:.2f}", "--rest-max-inflight-mb", f"{body_mb:.2f}"]
    try:
        process, rest_port, _ = _start_server(tree, base, extra + budget)
    except RuntimeError:  # an older tree without the flag
        process, rest_port, _ = _start_server(tree, base, extra)
    try:
        _json_cases(process, rest_port, body, results, prefix)
        results[f"{prefix}json_peak_rss_mb"] = round(_status_mb(process.pid, "VmHWM"), 1)
    except Exception as error:  # record and go on
        results[f"{prefix}json_error"] = repr(error)
    finally:
        process.terminate()
        process.wait(timeout=60)


_EXPORT = """
from selfy_tf.models import create_model
from serving.export import export_saved_model
model = create_model("selfy_tsm_r18", num_classes=10, num_frames=8, input_size=112,
                     width_multiplier=0.25)
export_saved_model(model, {base!r}, name="selfy", labels=[f"class_{{i}}" for i in range(10)])
"""


def _alternating_rps(trees: list[tuple[str, str, str]], args, results: dict) -> None:
    """The rps case on every tree's server at once, in alternating rounds.

    The servers keep `selfy serve`'s default `--rest-threads` (128), so that
    up to 128 clients are all served instead of answered 503.
    """
    extra = ["--rest-timeout", str(args.rest_timeout)]
    servers = []
    try:
        for tree, base, prefix in trees:
            backend = ["--rest-backend", args.rest_backend] if args.rest_backend and not prefix else []
            process, rest_port, _ = _start_server(tree, base, extra + backend)
            servers.append((process, rest_port, prefix))
        for clients in map(int, args.rps_clients.split(",")):
            rounds = {prefix: [] for _, _, prefix in servers}
            for round_index in range(args.rps_rounds):
                order = servers if round_index % 2 == 0 else servers[::-1]
                for _, rest_port, prefix in order:
                    rounds[prefix].append(_good_rps(rest_port, clients, args.rps_seconds))
            for prefix, values in rounds.items():
                results[f"{prefix}rest_rps_rounds_c{clients}"] = values
            now, baseline = rounds[""], rounds["baseline_"]
            ratios = sorted(a / b for a, b in zip(now, baseline) if b)
            if ratios:
                results[f"rest_rps_ratio_c{clients}"] = round(ratios[len(ratios) // 2], 3)
            logger.info("rps_alternating c%d done", clients)
    finally:
        for process, _, _ in servers:
            process.terminate()
            process.wait(timeout=60)


def _export(tree: str) -> str:
    """Exports the tiny model with the code in `tree`; returns the export base."""
    base = tempfile.mkdtemp(prefix="bench_serving_hostile_")
    environment = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", _EXPORT.format(base=base)], cwd=tree, env=environment,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return base


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import tensorflow as tf

    limit_threads(_THREADS)
    results: dict = {
        "bench": "serving_hostile",
        "tf_version": tf.__version__,
        "cpu_count": os.cpu_count(),
        "rest_threads": args.rest_threads,
        "rest_timeout_s": args.rest_timeout,
        "thin_width": args.thin_width,
        "idle_connections": args.idle_connections,
    }
    trees = [(_REPO, "")]
    if args.baseline_tree:
        trees.append((os.path.abspath(args.baseline_tree), "baseline_"))
    exported = []
    for tree, prefix in trees:
        try:
            base = _export(tree)
            exported.append((tree, base, prefix))
            run_cases(tree, base, args, results, prefix)
        except Exception as error:  # record and go on
            results[f"{prefix}error"] = repr(error)
    if args.rps_rounds > 0 and len(exported) == 2:
        try:
            _alternating_rps(exported, args, results)
        except Exception as error:  # record and go on
            results["rps_alternating_error"] = repr(error)
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
