"""Serving latency and throughput: `selfy serve` over REST / gRPC vs the SavedModel in-process.

    python benchmarks/bench_serving.py --requests 20 --results-file serving.json

Exports a model (default: tiny `selfy_tsm_r18`, 8 frames of 112²) once,
then measures:

- `inproc_*`: the SavedModel signature called directly in this process
  (the floor every server adds to);
- `<protocol>_batching_<on|off>_<jpeg|uint8>_c<clients>_*`: a `selfy serve`
  subprocess (batching on or off) answering 1, 4 and 16 concurrent clients,
  with JPEG frames (`serving_default`) or uint8 frames (`predict_frames`;
  over REST at 1 client only: JSON numbers for every pixel cost seconds).

Each case warms up untimed, then every client sends `--requests` requests.
Keys: `*_p50_ms`, `*_p99_ms`, `*_clips_per_sec`, and
`<protocol>_overhead_pct_c1_<input>` = server p50 at 1 client (batching off)
over the in-process p50, minus 100 %. Prints one JSON line on stdout; logs
go to stderr; a failing case records `<case>_error` and the sweep goes on.
TF runs with 2 threads in both processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from _common import limit_threads, write_results

logger = logging.getLogger("bench_serving")

_THREADS = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="selfy_tsm_r18", help="model zoo name")
    parser.add_argument("--num-classes", type=int, default=174, help="classes")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--input-size", type=int, default=112, help="crop size")
    parser.add_argument("--width-multiplier", type=float, default=0.25, help="backbone width scale")
    parser.add_argument("--selfy-channels", type=int, default=32, help="SELFY block width")
    parser.add_argument("--clients", default="1,4,16", help="concurrent client counts")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client")
    parser.add_argument("--protocols", default="grpc,rest", help="protocols to measure")
    parser.add_argument("--results-file", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def _clip_inputs(num_frames: int, input_size: int) -> dict[str, dict[str, np.ndarray]]:
    from tfrecords.features import encode_frames

    rng = np.random.default_rng(0)
    height = int(round(input_size * 240 / 224))
    source = rng.integers(0, 256, (num_frames, height, height * 4 // 3, 3), dtype=np.uint8)
    # Smooth frames so JPEG sizes look like real video, not noise.
    source = np.cumsum(source, axis=2, dtype=np.uint32).astype(np.uint8)
    frames = rng.integers(0, 256, (1, num_frames, input_size, input_size, 3), dtype=np.uint8)
    return {
        "jpeg": {"frames_jpeg": np.array([encode_frames(source)], dtype=object)},
        "uint8": {"frames": frames},
    }


_SIGNATURES = {"jpeg": "serving_default", "uint8": "predict_frames"}


def _measure(make_client, inputs, signature, num_clients, num_requests, num_warmup) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(num_clients + 1)

    def worker(_: int) -> None:
        client = make_client()
        for _ in range(num_warmup):
            client.predict(inputs, signature)
        barrier.wait()
        mine = []
        for _ in range(num_requests):
            start = time.perf_counter()
            client.predict(inputs, signature)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
        client.close()

    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        futures = [pool.submit(worker, index) for index in range(num_clients)]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 3),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 3),
        "clips_per_sec": round(len(latencies) / elapsed, 2),
    }


def _start_server(base: str, batching: bool) -> tuple[subprocess.Popen, str, str]:
    rest_port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "selfy_tf.cli.main", "serve", base, "--name", "selfy",
               "--rest-port", str(rest_port), "--grpc-port", str(grpc_port)]
    if not batching:
        command.append("--no-batching")
    environment = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(_THREADS),
                   "TF_NUM_INTEROP_THREADS": str(_THREADS), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    rest_url = f"http://127.0.0.1:{rest_port}"
    from serving.client import RestClient

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"selfy serve exited with status {process.returncode}")
        try:
            statuses = RestClient(rest_url, timeout_s=5).status()["model_version_status"]
            if any(entry["state"] == "AVAILABLE" for entry in statuses):
                return process, rest_url, f"127.0.0.1:{grpc_port}"
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError("selfy serve did not become available in 300 s")


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import tensorflow as tf

    limit_threads(_THREADS)
    from selfy_tf.models import create_model
    from serving.client import GrpcClient, LocalClient, RestClient
    from serving.export import export_saved_model

    clients = [int(count) for count in args.clients.split(",")]
    protocols = [protocol for protocol in args.protocols.split(",") if protocol]
    results: dict = {
        "bench": "serving",
        "model": args.model,
        "num_classes": args.num_classes,
        "num_frames": args.num_frames,
        "input_size": args.input_size,
        "width_multiplier": args.width_multiplier,
        "requests_per_client": args.requests,
        "threads": _THREADS,
        "cpu_count": os.cpu_count(),
        "tf_version": tf.__version__,
        "batch_per_request": 1,
        "host": "127.0.0.1",
    }
    workdir = tempfile.mkdtemp(prefix="bench_serving_")
    model = create_model(args.model, num_classes=args.num_classes, num_frames=args.num_frames,
                         input_size=args.input_size, width_multiplier=args.width_multiplier,
                         selfy_channels=args.selfy_channels)
    labels = [f"class_{index}" for index in range(args.num_classes)]
    export = export_saved_model(model, workdir, name="selfy", labels=labels)
    inputs = _clip_inputs(args.num_frames, args.input_size)
    results["jpeg_request_bytes"] = int(sum(len(frame) for frame in inputs["jpeg"]["frames_jpeg"][0]))
    results["uint8_request_bytes"] = int(inputs["uint8"]["frames"].nbytes)

    local = LocalClient(export.path)
    for kind, request in inputs.items():
        name = f"inproc_{kind}"
        try:
            measured = _measure(lambda: local, request, _SIGNATURES[kind], 1, args.requests, args.warmup)
            results.update({f"{name}_{key}": value for key, value in measured.items()})
            logger.info("%s: %s", name, measured)
        except Exception as error:  # record and go on
            results[f"{name}_error"] = repr(error)

    factories = {
        "grpc": lambda target, url: (lambda: GrpcClient(target)),
        "rest": lambda target, url: (lambda: RestClient(url)),
    }
    for batching in (False, True):
        tag = "on" if batching else "off"
        try:
            process, rest_url, grpc_target = _start_server(workdir, batching)
        except Exception as error:
            results[f"server_batching_{tag}_error"] = repr(error)
            continue
        try:
            for protocol in protocols:
                make_client = factories[protocol](grpc_target, rest_url)
                for kind, request in inputs.items():
                    for num_clients in clients:
                        name = f"{protocol}_batching_{tag}_{kind}_c{num_clients}"
                        if protocol == "rest" and kind == "uint8" and num_clients > 1:
                            # ~0.3 M pixel values as JSON numbers: parsing, not the
                            # model, dominates; one client shows it.
                            continue
                        try:
                            measured = _measure(make_client, request, _SIGNATURES[kind],
                                                num_clients, args.requests, args.warmup)
                            results.update({f"{name}_{key}": value for key, value in measured.items()})
                            logger.info("%s: %s", name, measured)
                        except Exception as error:  # record and go on
                            results[f"{name}_error"] = repr(error)
                            logger.warning("%s failed: %s", name, error)
        finally:
            process.terminate()
            process.wait(timeout=60)

    for protocol in protocols:
        for kind in inputs:
            served = results.get(f"{protocol}_batching_off_{kind}_c1_p50_ms")
            direct = results.get(f"inproc_{kind}_p50_ms")
            if served and direct:
                results[f"{protocol}_overhead_pct_c1_{kind}"] = round(100.0 * (served / direct - 1.0), 1)
        top = max(clients)
        on = results.get(f"{protocol}_batching_on_jpeg_c{top}_clips_per_sec")
        off = results.get(f"{protocol}_batching_off_jpeg_c{top}_clips_per_sec")
        if on and off:
            results[f"{protocol}_batching_speedup_c{top}_jpeg"] = round(on / off, 3)

    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
