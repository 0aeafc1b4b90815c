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

With `--faults` it runs the load matrix under bad requests instead:

    python benchmarks/bench_serving.py --faults --results-file faults.json

`faults_<protocol>_batching_<on|off>_c<clients>_bad<percent>_*` for REST and
gRPC, `--fault-clients` (1/4/16/64) concurrent clients, and
`--bad-fractions` (0, 10 %, 25 %) of bad requests, spread evenly over each
client's requests, of each of `--bad-kinds`:

- `header`: a frame that is not an image, or a truncated JPEG (refused by
  the server's header check, before batching);
- `decoder`: a complete JPEG whose scan names an undefined Huffman table,
  or whose precision is 12 bits (only the decoder refuses them: the first
  reaches the batcher; after it the batching server decodes frames in the
  request threads for `DECODE_IN_SERVER_S`);
- `mixed`: the four in turn.

Keys `..._bad0_*` for the clean run, `..._bad<percent>_<kind>_*` for the
others, each case running `--fault-seconds` after a warm-up, `--fault-rounds`
times in rotated order (the ratios then sum over the rounds): `good_rps`
(good requests answered per second), `good_p50_ms`, `good_p99_ms`,
`good_errors` (good requests that failed: should be 0), `bad_rejected` (bad
requests answered 400 / INVALID_ARGUMENT), `bad_unexpected` (bad requests
answered otherwise: should be 0), and `good_ratio` = good_rps over the
clean run's, measured just before with the same server and clients, after
waiting out `DECODE_IN_SERVER_S` so that it decodes as clean traffic does
(`faults_median_bad<percent>_<kind>_good_ratio` and `faults_min_...` over
the matrix). Per server: `faults_batching_<on|off>_rss_warm_mb` (after a
warm-up at the most clients), `..._rss_end_mb` and `..._rss_ratio` (end
over warm).

`--hostile` then runs the hostile clients of `bench_serving_hostile.py`
against the same export (keys `faults_hostile_*`: thin frames, header
slowloris, idle-connection flood, large JSON bodies), with the server's
peak RSS during each (`faults_hostile_<case>_peak_rss_mb`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from _common import free_port, limit_threads, write_results

logger = logging.getLogger("bench_serving")

_THREADS = 2


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
    parser.add_argument("--faults", action="store_true",
                        help="run the load matrix with bad requests instead")
    parser.add_argument("--fault-clients", default="1,4,16,64", help="client counts (--faults)")
    parser.add_argument("--bad-fractions", default="0,0.1,0.25",
                        help="fractions of bad requests (--faults)")
    parser.add_argument("--fault-seconds", type=float, default=3.0,
                        help="timed seconds per case (--faults)")
    parser.add_argument("--fault-rounds", type=int, default=1,
                        help="times each case runs, in rotated order (--faults)")
    parser.add_argument("--bad-kinds", default="header,decoder,mixed",
                        help="kinds of bad requests (--faults): header, decoder, mixed")
    parser.add_argument("--hostile", action="store_true",
                        help="also run bench_serving_hostile's cases (--faults)")
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


def _bad_frames(frame: bytes) -> dict[str, list[bytes]]:
    """Damaged copies of one JPEG frame, by kind (see the module docstring)."""
    undefined_table = bytearray(frame)
    undefined_table[frame.index(b"\xff\xda") + 6] = 0x33  # the first component's tables
    twelve_bits = bytearray(frame)
    twelve_bits[frame.index(b"\xff\xc0") + 4] = 12  # the frame header's precision
    header = [b"this is not an image", frame[: len(frame) // 2]]
    decoder = [bytes(undefined_table), bytes(twelve_bits)]
    return {"header": header, "decoder": decoder, "mixed": [header[0], decoder[0], header[1], decoder[1]]}


def _bad_requests(good: dict[str, np.ndarray], kind: str) -> list[dict[str, np.ndarray]]:
    """Variants of a JPEG request whose second frame is damaged in the ways of `kind`."""
    frames = list(good["frames_jpeg"][0])
    requests = []
    for damaged in _bad_frames(frames[1])[kind]:
        variant = frames.copy()
        variant[1] = damaged
        requests.append({"frames_jpeg": np.array([variant], dtype=object)})
    return requests


def _is_bad_request_error(error: Exception) -> bool:
    import grpc

    from serving.client import ClientError

    return isinstance(error, ClientError) and error.status in (400, grpc.StatusCode.INVALID_ARGUMENT)


def _measure_faults(make_client, good, bads, bad_fraction, num_clients, seconds, num_warmup) -> dict:
    """Clients send good and bad requests (bad ones spread evenly) for `seconds`."""
    latencies: list[float] = []
    counts = {"good_errors": 0, "bad_rejected": 0, "bad_unexpected": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(num_clients + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        client = make_client()
        for _ in range(num_warmup):
            client.predict(good)
        barrier.wait()
        mine, local = [], dict.fromkeys(counts, 0)
        # Offset per client so the bad requests do not arrive in lockstep.
        sent = index
        while not stop.is_set():
            bad = int((sent + 1) * bad_fraction) > int(sent * bad_fraction)
            request = bads[sent % len(bads)] if bad else good
            sent += 1
            start = time.perf_counter()
            try:
                client.predict(request)
                if bad:
                    local["bad_unexpected"] += 1
                else:
                    mine.append(time.perf_counter() - start)
            except Exception as error:  # counted below
                if not bad:
                    local["good_errors"] += 1
                    logger.warning("good request failed: %s", error)
                elif _is_bad_request_error(error):
                    local["bad_rejected"] += 1
                else:
                    local["bad_unexpected"] += 1
        with lock:
            latencies.extend(mine)
            for key, value in local.items():
                counts[key] += value
        client.close()

    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        futures = [pool.submit(worker, index) for index in range(num_clients)]
        barrier.wait()
        started = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies or [float("nan")]) * 1000.0
    return {
        "good_rps": round(len(latencies) / elapsed, 2),
        "good_p50_ms": round(float(np.percentile(milliseconds, 50)), 3),
        "good_p99_ms": round(float(np.percentile(milliseconds, 99)), 3),
        **counts,
    }


def _run_fault_cases(args, make_client, good, cases, num_clients: int, batching: bool, results: dict) -> None:
    """Runs `cases` (the clean one first) `--fault-rounds` times; records each case's figures.

    Each round starts one case later than the one before, so that a load
    that drifts during the run weighs on every case alike. `good_rps` is
    the mean over rounds, the counts are summed, the latencies are the last
    round's, and `good_ratio` is the case's good requests over the clean
    case's, summed over the rounds.
    """
    from serving.server.predictor import DECODE_IN_SERVER_S

    rates: dict[str, list[float]] = {}
    for round_index in range(args.fault_rounds):
        shift = round_index % len(cases)
        for name, bad_requests, fraction in cases[shift:] + cases[:shift]:
            if fraction == 0 and batching:
                time.sleep(DECODE_IN_SERVER_S)  # back to decoding in the graph, as clean traffic does
            try:
                measured = _measure_faults(make_client, good, bad_requests, fraction, num_clients,
                                           args.fault_seconds, args.warmup)
            except Exception as error:  # record and go on
                results[f"{name}_error"] = repr(error)
                logger.warning("%s failed: %s", name, error)
                continue
            logger.info("%s (round %d): %s", name, round_index + 1, measured)
            rates.setdefault(name, []).append(measured["good_rps"])
            for key in ("good_errors", "bad_rejected", "bad_unexpected"):
                measured[key] += results.get(f"{name}_{key}", 0)
            results.update({f"{name}_{key}": value for key, value in measured.items()})
    clean_name = cases[0][0]
    for name, case_rates in rates.items():
        results[f"{name}_good_rps"] = round(float(np.mean(case_rates)), 2)
        results[f"{name}_rounds"] = len(case_rates)
        if name != clean_name and len(rates.get(clean_name, ())) == len(case_rates):
            results[f"{name}_good_ratio"] = round(sum(case_rates) / sum(rates[clean_name]), 3)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def _run_faults(args, workdir: str, good: dict[str, np.ndarray], results: dict) -> None:
    from serving.client import GrpcClient, RestClient
    from serving.server.predictor import DECODE_IN_SERVER_S

    kinds = [kind for kind in args.bad_kinds.split(",") if kind]
    bads = {kind: _bad_requests(good, kind) for kind in kinds}
    clients = [int(count) for count in args.fault_clients.split(",")]
    fractions = [float(fraction) for fraction in args.bad_fractions.split(",") if float(fraction) > 0]
    protocols = [protocol for protocol in args.protocols.split(",") if protocol]
    results.update({"faults_seconds_per_case": args.fault_seconds, "faults_bad_fractions": fractions,
                    "faults_bad_kinds": kinds, "faults_rounds": args.fault_rounds,
                    "faults_decode_in_server_s": DECODE_IN_SERVER_S})
    for tag, process, rest_url, grpc_target in _each_server(workdir, results, "faults_"):
        factories = {
            "grpc": functools.partial(GrpcClient, grpc_target),
            "rest": functools.partial(RestClient, rest_url),
        }
        # Untimed, at the most clients: the allocator reaches the size of
        # the largest merged batches, so the RSS after it is the level the
        # server should hold, not a growth to explain.
        try:
            for protocol in protocols:
                _measure_faults(factories[protocol], good, bads["mixed" if "mixed" in bads else kinds[0]],
                                max(fractions), max(clients), args.fault_seconds / 2, args.warmup)
        except Exception as error:  # record and go on with the next server
            results[f"faults_batching_{tag}_warmup_error"] = repr(error)
            continue
        warm_rss = _rss_mb(process.pid)
        for protocol in protocols:
            for num_clients in clients:
                prefix = f"faults_{protocol}_batching_{tag}_c{num_clients}"
                cases = [(f"{prefix}_bad0", [good], 0.0)] + [
                    (f"{prefix}_bad{int(round(fraction * 100))}_{kind}", bads[kind], fraction)
                    for kind in kinds for fraction in fractions
                ]
                _run_fault_cases(args, factories[protocol], good, cases, num_clients, tag == "on", results)
        end_rss = _rss_mb(process.pid)
        results[f"faults_batching_{tag}_rss_warm_mb"] = warm_rss
        results[f"faults_batching_{tag}_rss_end_mb"] = end_rss
        results[f"faults_batching_{tag}_rss_ratio"] = round(end_rss / warm_rss, 3)
    for kind in kinds:
        for fraction in fractions:
            tag = f"_bad{int(round(fraction * 100))}_{kind}_good_ratio"
            ratios = [value for key, value in results.items()
                      if key.startswith("faults_") and key.endswith(tag)]
            if ratios:
                # The median over the matrix: single 3 s cases move by +-20 %
                # on a shared 2-core machine.
                results[f"faults_median{tag}"] = round(float(np.median(ratios)), 3)
                results[f"faults_min{tag}"] = min(ratios)
    results["faults_good_errors_total"] = sum(
        value for key, value in results.items() if key.endswith("_good_errors")
    )


def _each_server(workdir: str, results: dict, prefix: str = ""):
    """Yields `(tag, process, rest_url, grpc_target)` for a `selfy serve` with
    batching off, then on; stops each when the caller moves on."""
    for batching in (False, True):
        tag = "on" if batching else "off"
        try:
            process, rest_url, grpc_target = _start_server(workdir, batching)
        except Exception as error:  # record and go on
            results[f"{prefix}server_batching_{tag}_error"] = repr(error)
            continue
        try:
            yield tag, process, rest_url, grpc_target
        finally:
            process.terminate()
            process.wait(timeout=60)


def _start_server(base: str, batching: bool) -> tuple[subprocess.Popen, str, str]:
    rest_port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "selfy_cli.main", "serve", base, "--name", "selfy",
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


def _environment(args: argparse.Namespace) -> dict:
    """What the figures depend on: the model's shape, threads, TensorFlow, the host."""
    import tensorflow as tf

    return {
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


def _export_model(args: argparse.Namespace, workdir: str):
    """Exports the benchmarked model into `workdir` (the server's model base)."""
    from selfy_tf.models import create_model
    from serving.export import export_saved_model

    model = create_model(args.model, num_classes=args.num_classes, num_frames=args.num_frames,
                         input_size=args.input_size, width_multiplier=args.width_multiplier,
                         selfy_channels=args.selfy_channels)
    labels = [f"class_{index}" for index in range(args.num_classes)]
    return export_saved_model(model, workdir, name="selfy", labels=labels)


def _run_hostile(workdir: str, results: dict) -> None:
    """`--faults --hostile`: the hostile clients of bench_serving_hostile.py against this tree's server."""
    import bench_serving_hostile

    hostile_args = bench_serving_hostile._parse_args([])
    results["faults_hostile_idle_connections"] = hostile_args.idle_connections
    results["faults_hostile_rest_threads"] = hostile_args.rest_threads
    hostile_args.cases = "thin,slowloris,idle,json"
    try:
        tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        bench_serving_hostile.run_cases(tree, workdir, hostile_args, results, "faults_hostile_")
    except Exception as error:  # record and go on
        results["faults_hostile_error"] = repr(error)


def _measure_in_process(export_path: str, inputs: dict, args: argparse.Namespace, results: dict) -> None:
    """The exported model called in this process, without a server: the baseline of the overheads."""
    from serving.client import LocalClient

    local = LocalClient(export_path)
    for kind, request in inputs.items():
        name = f"inproc_{kind}"
        try:
            measured = _measure(lambda: local, request, _SIGNATURES[kind], 1, args.requests, args.warmup)
            results.update({f"{name}_{key}": value for key, value in measured.items()})
            logger.info("%s: %s", name, measured)
        except Exception as error:  # record and go on
            results[f"{name}_error"] = repr(error)


def _measure_served(workdir: str, inputs: dict, clients: list[int], protocols: list[str],
                    args: argparse.Namespace, results: dict) -> None:
    """Each protocol, input kind and client count against the server with batching off and on."""
    from serving.client import GrpcClient, RestClient

    factories = {
        "grpc": lambda target, url: (lambda: GrpcClient(target)),
        "rest": lambda target, url: (lambda: RestClient(url)),
    }
    for tag, _, rest_url, grpc_target in _each_server(workdir, results):
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


def _record_overheads(protocols: list[str], kinds, clients: list[int], results: dict) -> None:
    """Served over in-process latency at one client, and batching's gain at the most clients."""
    for protocol in protocols:
        for kind in kinds:
            served = results.get(f"{protocol}_batching_off_{kind}_c1_p50_ms")
            direct = results.get(f"inproc_{kind}_p50_ms")
            if served and direct:
                results[f"{protocol}_overhead_pct_c1_{kind}"] = round(100.0 * (served / direct - 1.0), 1)
        top = max(clients)
        on = results.get(f"{protocol}_batching_on_jpeg_c{top}_clips_per_sec")
        off = results.get(f"{protocol}_batching_off_jpeg_c{top}_clips_per_sec")
        if on and off:
            results[f"{protocol}_batching_speedup_c{top}_jpeg"] = round(on / off, 3)


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    limit_threads(_THREADS)

    clients = [int(count) for count in args.clients.split(",")]
    protocols = [protocol for protocol in args.protocols.split(",") if protocol]
    results = _environment(args)
    workdir = tempfile.mkdtemp(prefix="bench_serving_")
    export = _export_model(args, workdir)
    inputs = _clip_inputs(args.num_frames, args.input_size)
    results["jpeg_request_bytes"] = int(sum(len(frame) for frame in inputs["jpeg"]["frames_jpeg"][0]))
    results["uint8_request_bytes"] = int(inputs["uint8"]["frames"].nbytes)

    if args.faults:
        _run_faults(args, workdir, inputs["jpeg"], results)
        if args.hostile:
            _run_hostile(workdir, results)
        write_results(results, args.results_file)
        return 0

    _measure_in_process(export.path, inputs, args, results)
    _measure_served(workdir, inputs, clients, protocols, args, results)
    _record_overheads(protocols, inputs, clients, results)
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
