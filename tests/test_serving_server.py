"""Tests of the local model server, the clients, batching and `selfy predict|serve`.

The same client suite runs against our server and, when the binary is on
PATH, against `tensorflow_model_server`. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import concurrent.futures
import glob
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.batching import BatchingOptions, DynamicBatcher
from serving.client import ClientError, GrpcClient, LocalClient, RestClient
from serving.errors import ServingError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf_serving_rest")
SERVER_START_TIMEOUT_S = 120


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _clip(seed: int = 0, num_frames: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, 40, 50, 3), dtype=np.uint8)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (ClientError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def our_server(exported_model):
    from serving.server import ModelServer, RequestLimits

    server = ModelServer(
        exported_model.base,
        name="selfy",
        rest_port=0,
        grpc_port=0,
        batching=BatchingOptions(max_batch_size=8, batch_timeout_s=0.005),
        version_labels={"stable": 1},
        limits=RequestLimits(max_request_bytes=16 << 20),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_server_binary(exported_model):
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH (install TF Serving to run this case)")
    grpc_port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--rest_api_num_threads=4",
            "--model_name=selfy",
            f"--model_base_path={os.path.join(exported_model.base, 'selfy')}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        _wait_for(lambda: RestClient(rest_url).status(), SERVER_START_TIMEOUT_S, "tensorflow_model_server")
        yield rest_url, f"127.0.0.1:{grpc_port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(params=["selfy_serve", "tensorflow_model_server"])
def endpoints(request):
    """`(rest_url, grpc_target)` of each server implementation."""
    if request.param == "selfy_serve":
        server = request.getfixturevalue("our_server")
        return server.rest_url, server.grpc_target
    return request.getfixturevalue("model_server_binary")


@pytest.fixture(params=["rest_columnar", "rest_row", "grpc"])
def client(request, endpoints):
    rest_url, grpc_target = endpoints
    if request.param == "grpc":
        made = GrpcClient(grpc_target, model="selfy")
    else:
        made = RestClient(rest_url, model="selfy", columnar=request.param == "rest_columnar")
    yield made
    made.close()


@pytest.fixture(scope="module")
def local_client(exported_model):
    return LocalClient(os.path.join(exported_model.base, "selfy"))


def _status_code(error: ClientError):
    """HTTP 400 and INVALID_ARGUMENT both count as a bad request."""
    return error.status


class TestClientSuite:
    """Runs against every server implementation and every client."""

    def test_status_and_metadata(self, client):
        signature_defs = client.signature_defs()
        assert {"serving_default", "predict_frames"} <= set(signature_defs)
        assert list(signature_defs["serving_default"].inputs) == ["frames_jpeg"]
        assert list(signature_defs["predict_frames"].inputs) == ["frames"]
        # The frame axis takes any count (the graph samples): -1 in the metadata.
        assert client.num_frames == -1
        status = client.status()
        if isinstance(client, RestClient):
            (entry,) = status["model_version_status"]
            assert entry["version"] == "1" and entry["state"] == "AVAILABLE"
        else:
            (entry,) = status.model_version_status
            assert entry.version == 1 and entry.state == 30  # AVAILABLE

    def test_predict_frames_matches_keras(self, client, exported_model):
        frames = np.random.default_rng(4).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
        outputs = client.predict({"frames": frames}, "predict_frames")
        expected = exported_model.model(frames.astype(np.float32), training=False).numpy()
        np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4, rtol=0)
        assert outputs["top_k_labels"].shape == (2, 3)
        order = np.argsort(-expected, axis=-1, kind="stable")[:, :3]
        np.testing.assert_array_equal(outputs["top_k_indices"], order)
        labels = [[str(label if isinstance(label, str) else label.decode()) for label in row]
                  for row in outputs["top_k_labels"]]
        assert labels == np.array(exported_model.labels)[order].tolist()

    def test_predict_video_samples_like_evaluation(self, client, local_client, exported_model):
        clip = _clip(5)
        prediction = client.predict_video(clip)
        reference = local_client.predict_video(clip)
        assert prediction.labels == reference.labels
        np.testing.assert_allclose(prediction.scores, reference.scores, atol=1e-5)
        # Segment centres of 10 frames in 4 segments: floor(2.5 * (s + 0.5)).
        from selfy_tf.sampling import sample_eval_indices

        np.testing.assert_array_equal(sample_eval_indices(10, 4)[0], [1, 3, 6, 8])
        frames = [_jpeg(frame) for frame in clip[[1, 3, 6, 8]]]
        direct = client.predict({"frames_jpeg": np.array([frames], dtype=object)})
        np.testing.assert_allclose(direct["top_k_scores"][0], prediction.scores, atol=1e-5)
        assert set(prediction.labels) <= set(exported_model.labels)

    def test_bad_requests_are_refused_and_server_keeps_serving(self, client):
        cases = {
            "signature": ({"frames": np.zeros((1, 4, 32, 32, 3), np.uint8)}, "nope", "nope"),
            "input_name": ({"pixels": np.zeros((1, 4, 32, 32, 3), np.uint8)}, "predict_frames", "pixels"),
            "no_frames": ({"frames": np.zeros((1, 0, 32, 32, 3), np.uint8)}, "predict_frames", ""),
            "dtype": ({"frames": np.full((1, 4, 32, 32, 3), 0.5, np.float32)}, "predict_frames", ""),
            "corrupt_jpeg": ({"frames_jpeg": np.array([[b"corrupt"] * 4], dtype=object)}, None, ""),
            "shape": ({"frames_jpeg": np.array([[b"x"] * 9], dtype=object)}, None, ""),
        }
        for case, (inputs, signature, message) in cases.items():
            with pytest.raises(ClientError) as raised:
                client.predict(inputs, signature)
            assert raised.value.status in (400, grpc.StatusCode.INVALID_ARGUMENT), case
            assert message in raised.value.message, case
        frames = np.zeros((1, 4, 32, 32, 3), np.uint8)
        assert client.predict({"frames": frames}, "predict_frames")["logits"].shape == (1, 5)

    def test_large_message_passes_raised_grpc_limits(self, endpoints):
        # 4 noise PNG frames of 700x700: ~6 MB, above gRPC's 4 MB default.
        rng = np.random.default_rng(6)
        frames = []
        for _ in range(4):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(buffer, "PNG")
            frames.append(buffer.getvalue())
        assert sum(map(len, frames)) > 4 << 20
        client = GrpcClient(endpoints[1])
        outputs = client.predict({"frames_jpeg": np.array([frames], dtype=object)})
        client.close()
        assert outputs["logits"].shape == (1, 5)


def _rest(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    host, port = url[len("http://"):].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _same_structure(received, expected, path="body"):
    """Asserts equal keys, list lengths and leaf kinds (number vs string)."""
    if isinstance(expected, dict):
        assert isinstance(received, dict), path
        assert sorted(received) == sorted(expected), path
        for key in expected:
            _same_structure(received[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(received, list) and len(received) == len(expected), path
        for index, (left, right) in enumerate(zip(received, expected)):
            _same_structure(left, right, f"{path}[{index}]")
    elif isinstance(expected, str):
        assert isinstance(received, str), path
    else:
        assert isinstance(received, (int, float)) and not isinstance(received, bool), path


def _fill_placeholders(value, jpeg_b64: str, frames_rows):
    if value == "<JPEG_FRAME_B64>":
        return jpeg_b64
    if value == "<FRAMES_UINT8_ROWS>":
        return frames_rows
    if isinstance(value, list):
        return [_fill_placeholders(item, jpeg_b64, frames_rows) for item in value]
    if isinstance(value, dict):
        return {key: _fill_placeholders(item, jpeg_b64, frames_rows) for key, item in value.items()}
    return value


class TestRestProtocol:
    @pytest.mark.parametrize(
        "fixture_file", sorted(os.path.basename(path) for path in glob.glob(os.path.join(FIXTURES, "*.json")))
    )
    def test_documented_request_response_pairs(self, our_server, fixture_file):
        with open(os.path.join(FIXTURES, fixture_file)) as handle:
            fixture = json.load(handle)
        request = fixture["request"]
        jpeg_b64 = base64.b64encode(_jpeg(_clip(7)[0])).decode("ascii")
        frames_rows = np.zeros((1, 4, 32, 32, 3), np.uint8).tolist()
        if "raw_body" in request:
            body = request["raw_body"].encode()
        elif "body" in request:
            body = json.dumps(_fill_placeholders(request["body"], jpeg_b64, frames_rows)).encode()
        else:
            body = None
        status, answer = _rest(our_server.rest_url, request["method"], request["path"], body)
        expected = fixture["response"]
        assert status == expected["status"], answer
        if fixture.get("exact"):
            assert answer == expected["body"]
        elif fixture.get("subset"):
            assert sorted(answer) == sorted(expected["body"])
            assert answer["model_spec"] == expected["body"]["model_spec"]
            signature_map = answer["metadata"]["signature_def"]
            assert signature_map["@type"] == expected["body"]["metadata"]["signature_def"]["@type"]
            assert {"serving_default", "predict_frames"} <= set(signature_map["signature_def"])
        else:
            _same_structure(answer, expected["body"])

    def test_error_routes_and_limits(self, our_server):
        url = our_server.rest_url
        status, answer = _rest(url, "GET", "/v2/models")
        assert status == 404 and "Malformed request" in answer["error"]
        status, answer = _rest(url, "GET", "/v1/models/selfy/versions/9")
        assert status == 404 and "version 9" in answer["error"]
        status, answer = _rest(url, "POST", "/v1/models/selfy/versions/9:predict", b'{"inputs": [1]}')
        assert status == 404 and "Specific(selfy, 9)" in answer["error"]
        status, answer = _rest(url, "POST", "/v1/models/selfy:classify", b"{}")
        assert status == 400 and "Use :predict" in answer["error"]
        status, answer = _rest(url, "POST", "/v1/models/selfy:predict", b'{"signature_name": 3}')
        assert status == 400 and "'signature_name' must be a string" in answer["error"]
        # Refused from Content-Length alone: the body is never sent.
        connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
        connection.putrequest("POST", "/v1/models/selfy:predict")
        connection.putheader("Content-Length", str(20 << 20))
        connection.endheaders()
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == 413 and "exceeds the limit of 16777216 bytes" in answer["error"]
        assert "--max-request-mb" in answer["error"]
        status, answer = _rest(url, "POST", "/v1/models/selfy:predict", b'{"inputs": [[{"b64": "%%"}]]}')
        assert status == 400 and "base64" in answer["error"]
        assert _rest(url, "GET", "/v1/models/selfy")[0] == 200

    def test_version_labels(self, our_server):
        url = our_server.rest_url
        status, answer = _rest(url, "GET", "/v1/models/selfy/labels/stable")
        assert status == 200 and answer["model_version_status"][0]["version"] == "1"
        body = json.dumps({"signature_name": "predict_frames", "inputs": np.zeros((1, 4, 32, 32, 3), int).tolist()})
        status, answer = _rest(url, "POST", "/v1/models/selfy/labels/stable:predict", body.encode())
        assert status == 200 and len(answer["outputs"]["logits"]) == 1
        status, answer = _rest(url, "GET", "/v1/models/selfy/labels/canary/metadata")
        assert status == 400 and "Unrecognized servable version label: canary" in answer["error"]

    def test_grpc_errors(self, our_server):
        from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

        client = GrpcClient(our_server.grpc_target, model="other")
        with pytest.raises(ClientError) as raised:
            client.status()
        assert raised.value.status == grpc.StatusCode.NOT_FOUND
        client.close()
        channel = grpc.insecure_channel(our_server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "selfy"
        request.metadata_field.append("graph")
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetModelMetadata(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Metadata field graph is not supported" in raised.value.details()
        channel.close()
        client = GrpcClient(our_server.grpc_target)
        oversized = np.array([[b"x" * ((17 << 20) // 4)] * 4], dtype=object)
        with pytest.raises(ClientError) as raised:
            client.predict({"frames_jpeg": oversized})
        assert raised.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds the limit of 16777216 bytes" in raised.value.message
        client.close()


class TestModelStore:
    def test_new_version_is_picked_up_without_restart(self, exported_model, tmp_path):
        from serving.server import ModelServer

        base = tmp_path / "base"
        shutil.copytree(exported_model.base, base)
        with ModelServer(str(base), name="selfy", rest_port=0, grpc_port=None,
                         batching=None, poll_interval_s=0.2, warmup=False) as server:
            client = RestClient(server.rest_url)
            assert [entry["version"] for entry in client.status()["model_version_status"]] == ["1"]
            staging = base / "selfy" / ".tmp-2"
            shutil.copytree(base / "selfy" / "1", staging)
            os.rename(staging, base / "selfy" / "2")

            def version_two_serves():
                states = {entry["version"]: entry["state"] for entry in client.status()["model_version_status"]}
                return states.get("2") == "AVAILABLE" and states.get("1") == "END"

            _wait_for(version_two_serves, 60, "version 2")
            assert client.metadata()["model_spec"]["version"] == "2"
            frames = np.zeros((1, 4, 32, 32, 3), np.uint8)
            assert client.predict({"frames": frames}, "predict_frames")["logits"].shape == (1, 5)
            # A broken version is reported and the previous one keeps serving.
            (base / "selfy" / "3").mkdir()
            (base / "selfy" / "3" / "saved_model.pb").write_bytes(b"broken")
            _wait_for(
                lambda: any(entry["version"] == "3" and entry["state"] == "END"
                            for entry in client.status()["model_version_status"]),
                60, "version 3 to fail",
            )
            assert client.metadata()["model_spec"]["version"] == "2"
            client.close()

    def test_constructor_errors(self, tmp_path):
        from serving.model_store import ModelStore

        with pytest.raises(FileNotFoundError, match="model base path not found"):
            ModelStore(str(tmp_path / "missing"), name="selfy")
        with pytest.raises(ValueError, match="`num_versions` must be at least 1"):
            ModelStore(str(tmp_path), name="selfy", num_versions=0)


class TestDynamicBatcher:
    @staticmethod
    def _double(batch):
        time.sleep(0.01)
        if np.any(batch["x"] < 0):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        return {"y": batch["x"] * 2, "rows": np.full(len(batch["x"]), len(batch["x"]))}

    def test_concurrent_requests_are_merged_and_split_back(self):
        batcher = DynamicBatcher(BatchingOptions(max_batch_size=8, batch_timeout_s=0.05, num_batch_threads=1))
        futures = [batcher.submit("k", self._double, {"x": np.array([[index, index]])}) for index in range(6)]
        results = [future.result(timeout=10) for future in futures]
        batcher.close()
        for index, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], [[2 * index, 2 * index]])
        assert max(result["rows"][0] for result in results) > 1
        assert sum(size * count for size, count in batcher.batch_sizes.items()) == 6

    def test_max_batch_size_and_failure_isolation(self):
        batcher = DynamicBatcher(BatchingOptions(max_batch_size=3, batch_timeout_s=0.05, num_batch_threads=1))
        futures = [batcher.submit("k", self._double, {"x": np.array([[value]])}) for value in (1, -1, 2, 3, 4)]
        assert futures[0].result(timeout=10)["y"].tolist() == [[2]]
        with pytest.raises(ServingError, match="negative input"):
            futures[1].result(timeout=10)
        assert [future.result(timeout=10)["y"].tolist() for future in futures[2:]] == [[[4]], [[6]], [[8]]]
        batcher.close()
        assert max(batcher.batch_sizes) <= 3

    def test_checks_isolate_failing_requests_in_one_more_run(self):
        runs = []

        def double(batch):
            runs.append(len(batch["x"]))
            return self._double(batch)

        def check(inputs):
            if np.any(inputs["x"] < 0):
                raise ValueError("negative")

        batcher = DynamicBatcher(BatchingOptions(max_batch_size=8, batch_timeout_s=0.2, num_batch_threads=1))
        values = (1, -1, 2, 3, -4, 5, 6, 7)
        futures = [batcher.submit("k", double, {"x": np.array([[value]])}, check) for value in values]
        for value, future in zip(values, futures):
            if value < 0:
                with pytest.raises(ServingError, match="negative input"):
                    future.result(timeout=10)
            else:
                assert future.result(timeout=10)["y"].tolist() == [[2 * value]]
        batcher.close()
        # The failed batch, each failing request alone, the other six merged.
        assert runs == [8, 1, 1, 6]

    def test_bounded_queue_and_options(self):
        batcher = DynamicBatcher(BatchingOptions(max_enqueued_requests=1, batch_timeout_s=0.5, num_batch_threads=1))
        blocker = threading.Event()

        def slow(batch):
            blocker.wait(10)
            return {"y": batch["x"]}

        first = batcher.submit("a", slow, {"x": np.zeros((1, 1))})
        time.sleep(0.6)  # the worker has taken `first` and is blocked in it
        batcher.submit("a", slow, {"x": np.zeros((1, 1))})
        with pytest.raises(ServingError, match="queue is full"):
            batcher.submit("a", slow, {"x": np.zeros((1, 1))})
        blocker.set()
        first.result(timeout=10)
        batcher.close()
        with pytest.raises(ValueError, match="`max_batch_size` must be at least 1"):
            BatchingOptions(max_batch_size=0)
        with pytest.raises(ValueError, match="`batch_timeout_s` must be >= 0"):
            BatchingOptions(batch_timeout_s=-1)


class TestLoad:
    def test_concurrent_clients_on_loopback(self, our_server):
        """8 clients for at most 4 s: no errors; p50/p99 and throughput logged."""
        num_clients, duration_s, max_requests = 8, 4.0, 40
        frames = [_jpeg(frame) for frame in _clip(8)[:4]]
        request = {"frames_jpeg": np.array([frames], dtype=object)}
        latencies, errors = [], []
        lock = threading.Lock()
        deadline = time.monotonic() + duration_s

        def worker(index: int) -> None:
            client = RestClient(our_server.rest_url) if index % 2 else GrpcClient(our_server.grpc_target)
            for _ in range(max_requests):
                if time.monotonic() > deadline:
                    break
                start = time.perf_counter()
                try:
                    client.predict(request)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except Exception as error:  # collected and asserted below
                    with lock:
                        errors.append(repr(error))
            client.close()

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
            list(pool.map(worker, range(num_clients)))
        elapsed = time.perf_counter() - started
        assert errors == []
        assert len(latencies) >= num_clients
        p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
        print(f"load: {len(latencies)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"{len(latencies) / elapsed:.1f} req/s")


def _write_video(path: str, num_frames: int = 12) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in _clip(9, num_frames):
            padded = np.zeros((48, 64, 3), np.uint8)
            padded[:40, :50] = frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class TestCommands:
    def test_predict_video_from_server_and_local_model(self, our_server, exported_model, tmp_path, capsys):
        from selfy_cli.main import main

        video = str(tmp_path / "clip.mp4")
        _write_video(video)
        assert main(["predict", video, "--server", our_server.rest_url, "--json"]) == 0
        over_rest = json.loads(capsys.readouterr().out)
        assert main(["predict", video, "--server", f"grpc://{our_server.grpc_target}", "--json"]) == 0
        over_grpc = json.loads(capsys.readouterr().out)
        assert main(["predict", video, "--model", os.path.join(exported_model.base, "selfy")]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 3 and lines[0].startswith("1\t")
        assert [entry["label"] for entry in over_rest["top_k"]] == [entry["label"] for entry in over_grpc["top_k"]]
        assert lines[0].split("\t")[2] == over_rest["top_k"][0]["label"]
        assert main(["predict", video, "--server", "ftp://127.0.0.1:1"]) == 1
        assert "must start with http:// or grpc://" in capsys.readouterr().err

    def test_serve_cap_defaults_are_the_library_defaults(self):
        from selfy_cli.main import build_parser
        from serving.server import RequestLimits

        args = build_parser().parse_args(["serve", "BASE"])
        limits = RequestLimits()
        assert (args.max_batch_clips, args.max_clip_frames, args.max_frame_size) == (
            limits.max_batch_clips, limits.max_clip_frames, limits.max_frame_size
        )
        assert int(args.max_request_mb * (1 << 20)) == limits.max_request_bytes
        from serving.model_store import DEFAULT_LOAD_TIMEOUT_S
        from serving.server.rest import DEFAULT_MAX_INFLIGHT_BYTES

        assert int(args.rest_max_inflight_mb * (1 << 20)) == DEFAULT_MAX_INFLIGHT_BYTES
        assert args.load_timeout == DEFAULT_LOAD_TIMEOUT_S
        from serving.server.model_server import DEFAULT_REST_BACKEND, REST_BACKENDS

        assert args.rest_backend == DEFAULT_REST_BACKEND
        for backend in REST_BACKENDS:
            assert build_parser().parse_args(["serve", "BASE", "--rest-backend", backend]).rest_backend == backend

    def test_serve_starts_and_stops(self, exported_model, monkeypatch, capsys):
        from selfy_cli import serve
        from selfy_cli.main import main
        from serving.server.model_server import ModelServer

        started = []
        monkeypatch.setattr(ModelServer, "wait", lambda self: started.append(RestClient(self.rest_url).status()))
        argv = ["serve", exported_model.base, "--rest-port", "0", "--grpc-port", "0", "--no-batching"]
        assert main(argv) == 0
        assert started[0]["model_version_status"][0]["state"] == "AVAILABLE"
        assert main(argv + ["--version-labels", "stable"]) == 1
        assert "`--version-labels` must be LABEL=VERSION" in capsys.readouterr().err
        assert serve._version_labels("stable=1, canary=2") == {"stable": 1, "canary": 2}
