"""Fault suite of `selfy serve`: what a careless client, a second server or a
half-finished copy must not be able to do to a running endpoint.

Version policy under deletion and repair, port clashes, request caps,
bad requests inside merged batches, half-sent REST connections and
saturation, error codes and messages, stale export temporaries, and
hostile clients and versions (slow headers, idle floods, bodies in flight,
thin frames, deep JSON, out-of-range values, non-ASCII digits, FIFOs and
device links among a version's files, hanging loads).
Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import types

import grpc
import numpy as np
import pytest
from test_serving_server import _clip, _jpeg, _rest, _wait_for, our_server  # noqa: F401 (fixture)

from selfy_tf.run_dir import SAVED_MODEL_INFO
from serving.batching import BatchingOptions
from serving.client import ClientError, GrpcClient, RestClient

WAIT_S = 30
FRAMES = np.zeros((1, 4, 32, 32, 3), np.uint8)


def _model_server(base, **kwargs):
    from serving.server import ModelServer

    options = dict(name="selfy", rest_port=0, grpc_port=None, batching=None,
                   poll_interval_s=0.1, warmup=False)
    options.update(kwargs)
    return ModelServer(str(base), **options)


def _states(client: RestClient) -> dict[int, str]:
    return {int(entry["version"]): entry["state"] for entry in client.status()["model_version_status"]}


def _serving_version(client: RestClient) -> int:
    return int(client.metadata()["model_spec"]["version"])


@pytest.fixture(params=["threads", "aiohttp"])
def rest_backend(request) -> str:
    """Each REST front end of `selfy serve --rest-backend`."""
    return request.param


@pytest.fixture
def model_copy(exported_model, tmp_path):
    """A writable copy of the export base holding `selfy/1`."""
    base = tmp_path / "base"
    shutil.copytree(exported_model.base, base)
    return base


def _jpeg_frames(seed: int = 0) -> list[bytes]:
    return [_jpeg(frame) for frame in _clip(seed)[:4]]


def _grpc_predict(target: str, tensors: dict, signature_name: str = ""):
    """A raw PredictRequest built from TensorProtos (bypassing the client's checks)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "selfy"
    request.model_spec.signature_name = signature_name
    for name, proto in tensors.items():
        request.inputs[name].CopyFrom(proto)
    channel = grpc.insecure_channel(target)
    try:
        return request.ByteSize(), prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=WAIT_S
        )
    finally:
        channel.close()


def _declared_tensor(shape, dtype: int, **values):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for field, content in values.items():
        if field == "tensor_content":
            proto.tensor_content = content
        else:
            getattr(proto, field).extend(content)
    return proto


class TestVersionPolicy:
    def test_deleting_the_newest_version_serves_the_previous_one(self, model_copy):
        model_dir = model_copy / "selfy"
        with _model_server(model_copy) as server:
            client = RestClient(server.rest_url)
            shutil.copytree(model_dir / "1", model_dir / ".copy-2")
            os.rename(model_dir / ".copy-2", model_dir / "2")
            _wait_for(lambda: _serving_version(client) == 2, WAIT_S, "version 2 to serve")
            shutil.rmtree(model_dir / "2")
            _wait_for(lambda: _serving_version(client) == 1, WAIT_S, "version 1 to serve again")
            assert client.predict({"frames": FRAMES}, "predict_frames")["logits"].shape == (1, 5)
            assert _states(client) == {1: "AVAILABLE"}
            client.close()

    def test_failed_version_is_retried_once_its_files_change(self, model_copy):
        model_dir = model_copy / "selfy"
        # A version caught mid-copy: the graph is there, the variables not yet.
        (model_dir / "2").mkdir()
        shutil.copy2(model_dir / "1" / "saved_model.pb", model_dir / "2")
        with _model_server(model_copy) as server:
            client = RestClient(server.rest_url)
            _wait_for(lambda: _states(client) == {1: "AVAILABLE", 2: "END"}, WAIT_S, "version 2 to fail")
            error = client.status()["model_version_status"][0]["status"]
            assert error["error_code"] != "OK" and error["error_message"]
            # The serving version is kept while the newer one is broken.
            assert _serving_version(client) == 1
            shutil.copytree(model_dir / "1", model_dir / "2", dirs_exist_ok=True)
            _wait_for(lambda: _serving_version(client) == 2, WAIT_S, "repaired version 2 to serve")
            assert client.predict({"frames": FRAMES}, "predict_frames")["logits"].shape == (1, 5)
            client.close()


class TestPorts:
    @pytest.mark.parametrize("protocol", ["grpc", "rest"])
    def test_second_server_on_a_taken_port_exits_with_one_line(
        self, protocol, our_server, exported_model, monkeypatch, capsys
    ):
        from selfy_cli.main import main
        from serving.server.model_server import ModelServer

        # Were the port shared, `serve` would start and block in wait().
        monkeypatch.setattr(ModelServer, "wait", lambda self: None)
        taken = our_server.grpc.port if protocol == "grpc" else our_server.rest.port
        ports = {"grpc": "0", "rest": "0"}
        ports[protocol] = str(taken)
        argv = ["serve", exported_model.base, "--grpc-port", ports["grpc"],
                "--rest-port", ports["rest"], "--no-batching"]
        assert main(argv) == 1
        error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        name = "gRPC" if protocol == "grpc" else "REST"
        assert error_lines == [
            f"selfy serve: error: {name} port {taken} is already in use on 127.0.0.1. Stop the "
            f"other server or choose another port with --{protocol}-port (0: any free port)."
        ]
        assert RestClient(our_server.rest_url).status()["model_version_status"][0]["state"] == "AVAILABLE"
        from serving.errors import PortInUseError

        with pytest.raises(PortInUseError):
            main(["--debug"] + argv)


class TestRequestCaps:
    def test_grpc_declared_shape_and_payload_are_checked_before_allocating(self, our_server):
        from tensorflow.core.framework import types_pb2

        cases = {
            "clips": ([2048, 4, 32, 32, 3], {"int_val": [0]}, "--max-batch-clips"),
            # Refused by the declared frame size, or by the frame-size cap
            # where the signature takes frames of any size.
            "pixels": ([1, 4, 8000, 8000, 3], {"int_val": [0]}, "shape (1, 4, 8000, 8000, 3)"),
            "one_value": ([1, 4, 32, 32, 3], {"int_val": [0]}, "one value per element"),
            "content": ([1, 4, 32, 32, 3], {"tensor_content": b"\0" * 7}, "tensor_content holds 7 bytes"),
        }
        for case, (shape, values, message) in cases.items():
            tensor = _declared_tensor(shape, types_pb2.DT_UINT8, **values)
            with pytest.raises(grpc.RpcError) as raised:
                size, _ = _grpc_predict(our_server.grpc_target, {"frames": tensor}, "predict_frames")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert message in raised.value.details(), case
        assert _declared_tensor([2048, 4, 32, 32, 3], types_pb2.DT_UINT8, int_val=[0]).ByteSize() < 70

    def test_frame_size_and_batch_caps(self, our_server):
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(buffer, format="JPEG")
        wide = buffer.getvalue()
        request = {"frames_jpeg": np.array([[wide] * 4], dtype=object)}
        for client in (RestClient(our_server.rest_url), GrpcClient(our_server.grpc_target)):
            with pytest.raises(ClientError) as raised:
                client.predict(request)
            assert raised.value.status in (400, grpc.StatusCode.INVALID_ARGUMENT)
            assert "instance 0, frame 0 is 5000x1 pixels" in raised.value.message
            assert "--max-frame-size" in raised.value.message
            client.close()
        clips = np.array([_jpeg_frames()] * 65, dtype=object)
        client = RestClient(our_server.rest_url)
        with pytest.raises(ClientError) as raised:
            client.predict({"frames_jpeg": clips})
        assert raised.value.status == 400 and "holds 65 clips" in raised.value.message
        assert "--max-batch-clips" in raised.value.message
        assert client.predict({"frames_jpeg": clips[:2]})["logits"].shape == (2, 5)
        client.close()


class TestFrameHeaders:
    @pytest.mark.parametrize("image_format", ["JPEG", "JPEG-progressive", "PNG"])
    def test_size_from_header_matches_the_decoded_image(self, image_format):
        import io

        from PIL import Image

        from serving.server.image_header import ImageHeaderError, image_size

        for height, width in ((1, 5000), (37, 53), (300, 20)):
            buffer = io.BytesIO()
            pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
            if image_format == "JPEG-progressive":
                Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True)
            else:
                Image.fromarray(pixels).save(buffer, format=image_format)
            data = buffer.getvalue()
            assert image_size(data) == Image.open(io.BytesIO(data)).size[::-1]
            with pytest.raises(ImageHeaderError, match="truncated"):
                image_size(data[: len(data) * 2 // 3])

    def test_open_frame_axis_is_capped(self):
        import tensorflow as tf

        from serving.errors import ServingError
        from serving.model_store import SignatureInfo
        from serving.server.predictor import RequestLimits, check_inputs

        # The frame axis as a variable-length signature declares it.
        signature = SignatureInfo("predict_frames", {"frames": tf.TensorSpec([None, None, 8, 8, 3], tf.uint8)}, None)
        limits = RequestLimits(max_clip_frames=6)
        checked = check_inputs(signature, {"frames": np.zeros((2, 6, 8, 8, 3), np.uint8)}, limits)
        assert checked["frames"].shape == (2, 6, 8, 8, 3)
        with pytest.raises(ServingError, match="7 frames per clip .*at most 6 .*--max-clip-frames"):
            check_inputs(signature, {"frames": np.zeros((1, 7, 8, 8, 3), np.uint8)}, limits)
        with pytest.raises(ServingError, match=r"expects \(-1, -1, 8, 8, 3\)"):
            check_inputs(signature, {"frames": np.zeros((1, 6, 9, 8, 3), np.uint8)}, limits)
        with pytest.raises(ServingError, match="empty axis"):
            check_inputs(signature, {"frames": np.zeros((1, 0, 8, 8, 3), np.uint8)}, limits)
        # Frames of any size: height and width are capped like encoded frames.
        any_size = SignatureInfo("predict_frames", {"frames": tf.TensorSpec([None, None, None, None, 3], tf.uint8)}, None)
        limits = RequestLimits(max_frame_size=16)
        assert check_inputs(any_size, {"frames": np.zeros((1, 2, 16, 9, 3), np.uint8)}, limits)
        with pytest.raises(ServingError, match="17 pixels on axis 3 .*--max-frame-size"):
            check_inputs(any_size, {"frames": np.zeros((1, 2, 16, 17, 3), np.uint8)}, limits)


class TestBadRequestsInBatches:
    def test_bad_frames_fail_alone_before_joining_a_batch(self, exported_model):
        good = _jpeg_frames(1)
        bad = {
            "garbage": [good[0], b"not an image", good[2], good[3]],
            "truncated": [good[0], good[1][: len(good[1]) // 2], good[2], good[3]],
        }
        # One batch thread and a long timeout: the 8 requests would share batches.
        batching = BatchingOptions(max_batch_size=16, batch_timeout_s=0.3, num_batch_threads=1)
        with _model_server(exported_model.base, rest_port=None, grpc_port=0, batching=batching) as server:
            reference = GrpcClient(server.grpc_target).predict(
                {"frames_jpeg": np.array([good], dtype=object)}
            )["logits"]
            server.batcher.batch_sizes.clear()
            requests = [good] * 6 + list(bad.values())

            def send(frames):
                client = GrpcClient(server.grpc_target)
                try:
                    return client.predict({"frames_jpeg": np.array([frames], dtype=object)})
                except ClientError as error:
                    return error
                finally:
                    client.close()

            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                results = list(pool.map(send, requests))
            rows = sum(size * count for size, count in server.batcher.batch_sizes.items())
        for result in results[:6]:
            np.testing.assert_allclose(result["logits"], reference, atol=1e-4)
        garbage, truncated = results[6:]
        for error, reason in ((garbage, "not a JPEG or PNG"), (truncated, "truncated JPEG")):
            assert isinstance(error, ClientError) and error.status == grpc.StatusCode.INVALID_ARGUMENT
            assert "instance 0, frame 1 cannot be decoded" in error.message and reason in error.message
        assert rows == 6  # the bad requests never reached the batcher

    @pytest.mark.parametrize("view_record", [True, False], ids=["with-view-record", "without"])
    def test_a_frame_only_the_decoder_refuses_fails_only_its_own_request(
        self, exported_model, view_record, tmp_path, monkeypatch
    ):
        from serving.server import predictor as predictor_module

        clips = [_jpeg_frames(seed) for seed in (1, 2, 3)]
        damaged = bytearray(clips[0][1])
        start_of_scan = damaged.index(b"\xff\xda")
        damaged[start_of_scan + 6] = 0x33  # first component's Huffman tables: 3, never defined
        bad = [clips[0][0], bytes(damaged), *clips[0][2:]]
        base = exported_model.base
        if not view_record:  # as from an exporter that wrote no record: only the batcher's checks find it
            base = tmp_path / "base"
            shutil.copytree(exported_model.base, base)
            (base / "selfy" / "1" / SAVED_MODEL_INFO).unlink()
        batching = BatchingOptions(max_batch_size=16, batch_timeout_s=0.3, num_batch_threads=1)
        with _model_server(base, rest_port=None, grpc_port=0, batching=batching) as server:
            loaded = server.store.get()
            assert (loaded.frame_decoder is not None) == view_record
            decoded_in_server = []
            decode_frames = loaded.decode_frames
            monkeypatch.setattr(
                loaded, "decode_frames", lambda frames: decoded_in_server.append(1) or decode_frames(frames)
            )

            def send(frames):
                client = GrpcClient(server.grpc_target)
                try:
                    return client.predict({"frames_jpeg": np.array([frames], dtype=object)})
                except ClientError as error:
                    return error
                finally:
                    client.close()

            alone = [send(frames)["logits"] for frames in clips]
            requests = [*clips, bad, *clips]
            rounds = []
            for _ in range(2):
                server.batcher.batch_sizes.clear()
                decoded_in_server.clear()
                with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                    results = list(pool.map(send, requests))
                rows = sum(size * count for size, count in server.batcher.batch_sizes.items())
                rounds.append((rows, len(decoded_in_server), results))
            # Once DECODE_IN_SERVER_S has passed, clean clips decode in the graph again.
            later = time.monotonic() + predictor_module.DECODE_IN_SERVER_S + 1
            monkeypatch.setattr(predictor_module, "time", types.SimpleNamespace(monotonic=lambda: later))
            decoded_in_server.clear()
            for frames in clips:
                send(frames)
        # First round: the header check passes the bad request, so it joins a
        # batch and the batcher's checks pick it out. Second round, with a
        # view record: every request is decoded in its own thread, and the
        # bad one fails there without reaching the batcher.
        if view_record:
            assert [(rows, decoded) for rows, decoded, _ in rounds] == [
                (len(requests), 0), (len(requests) - 1, len(requests))
            ]
        else:
            assert [(rows, decoded) for rows, decoded, _ in rounds] == [(len(requests), 0)] * 2
        assert decoded_in_server == []
        for _, _, results in rounds:
            error = results[3]
            assert isinstance(error, ClientError) and error.status == grpc.StatusCode.INVALID_ARGUMENT
            assert "JPEG" in error.message
            for result, reference in zip(results[:3] + results[4:], alone + alone):
                np.testing.assert_allclose(result["logits"], reference, atol=1e-4)


class TestRestConnections:
    def test_half_sent_requests_time_out(self, exported_model, rest_backend):
        with _model_server(exported_model.base, rest_backend=rest_backend, rest_timeout_s=1.0) as server:
            port = server.rest.port
            headers_only = socket.create_connection(("127.0.0.1", port), timeout=10)
            headers_only.sendall(b"POST /v1/models/selfy:predict HTTP/1.1\r\nHost: x\r\n")
            half_body = socket.create_connection(("127.0.0.1", port), timeout=10)
            half_body.sendall(
                b"POST /v1/models/selfy:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1000\r\n\r\n{\"inputs\": "
            )
            started = time.monotonic()
            assert headers_only.recv(1024) == b""  # closed by the server
            answer = b""
            while chunk := half_body.recv(4096):  # the server closes after its reply
                answer += chunk
            assert time.monotonic() - started < 8
            assert answer.startswith(b"HTTP/1.1 408") and b"--rest-timeout" in answer
            headers_only.close()
            half_body.close()
            assert _rest(server.rest_url, "GET", "/v1/models/selfy")[0] == 200

    def test_saturated_server_answers_503_and_abandoned_connections_log_nothing(
        self, exported_model, rest_backend, capfd
    ):
        with _model_server(exported_model.base, rest_backend=rest_backend, rest_threads=2, rest_timeout_s=15.0) as server:
            port = server.rest.port
            holders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
            for holder in holders:
                holder.sendall(b"GET /v1/models/selfy HTTP/1.1\r\n")

            def busy_answer():
                # 200 until the server has taken both holders into its threads.
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    connection.request("GET", "/v1/models/selfy")
                    response = connection.getresponse()
                    body = json.loads(response.read())
                    return (response, body) if response.status == 503 else None
                finally:
                    connection.close()

            response, body = _wait_for(busy_answer, 10, "a 503 from the saturated server")
            assert response.getheader("Retry-After") == "1"
            assert "--rest-threads" in body["error"]
            for holder in holders:
                # Reset instead of a clean close: an abandoned client.
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                holder.close()
            _wait_for(lambda: _rest(server.rest_url, "GET", "/v1/models/selfy")[0] == 200,
                      WAIT_S, "a free REST thread")
        assert "Traceback" not in capfd.readouterr().err


    def test_connection_burst_gets_answers_not_resets(self, exported_model, rest_backend):
        with _model_server(exported_model.base, rest_backend=rest_backend, rest_threads=2, rest_timeout_s=5.0) as server:

            def status_code(_):
                connection = http.client.HTTPConnection("127.0.0.1", server.rest.port, timeout=20)
                try:
                    connection.request("GET", "/v1/models/selfy")
                    response = connection.getresponse()
                    response.read()
                    return response.status
                except OSError as error:
                    return repr(error)
                finally:
                    connection.close()

            with concurrent.futures.ThreadPoolExecutor(100) as pool:
                codes = list(pool.map(status_code, range(200)))
        assert set(codes) <= {200, 503}, [code for code in codes if code not in (200, 503)][:3]
        assert 200 in codes


class TestErrorReplies:
    def test_bad_frames_name_the_instance_and_frame(self, our_server):
        good = _jpeg_frames(2)
        cases = {
            "not a JPEG or PNG image": [good[0], b"corrupt", good[2], good[3]],
            "truncated JPEG: no end-of-image marker": [good[0], good[1][:-40], good[2], good[3]],
        }
        client = RestClient(our_server.rest_url)
        for reason, frames in cases.items():
            with pytest.raises(ClientError) as raised:
                client.predict({"frames_jpeg": np.array([good, frames], dtype=object)})
            assert raised.value.status == 400
            assert f"instance 1, frame 1 cannot be decoded: {reason}" in raised.value.message
        client.close()

    def test_graph_errors_keep_the_op_message(self, exported_model):
        from serving.errors import ServingError
        from serving.model_store import LoadedVersion

        # Called directly, without the server's header checks: the decoder's
        # own message must survive, not only "Graph execution error:".
        loaded = LoadedVersion(os.path.join(exported_model.base, "selfy", "1"), 1)
        with pytest.raises(ServingError) as raised:
            loaded.run(None, {"frames_jpeg": np.array([[b"corrupt"] * 4], dtype=object)})
        assert raised.value.message.startswith("Unknown image file format"), raised.value.message

    def test_deep_json_unknown_dtype_and_methods(self, our_server):
        from tensorflow.core.framework import types_pb2

        deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, answer = _rest(our_server.rest_url, "POST", "/v1/models/selfy:predict", deep)
        assert status == 400 and "nests arrays or objects too deeply" in answer["error"]
        with pytest.raises(grpc.RpcError) as raised:
            _grpc_predict(our_server.grpc_target, {"frames": _declared_tensor([1], 21)}, "predict_frames")
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "DT_VARIANT (enum 21)" in raised.value.details() and "uint8" in raised.value.details()
        assert types_pb2.DataType.Name(21) == "DT_VARIANT"
        for method in ("PUT", "DELETE", "PATCH"):
            status, answer = _rest(our_server.rest_url, method, "/v1/models/selfy", b"{}")
            assert status == 501 and "Unsupported method" in answer["error"], method


class TestExportTemporaries:
    def test_export_removes_temporaries_of_killed_exports(self, exported_model, tmp_path):
        from serving.export import batching_config_text, export_saved_model, models_config_text

        model_dir = tmp_path / "base" / "selfy"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            stale = model_dir / f".tmp-1-pid{dead.pid}-a1b2c3"
            legacy = model_dir / ".tmp-1-k3j4h5g6"
            running = model_dir / f".tmp-2-pid{alive.pid}-d4e5f6"
            for folder in (stale, legacy, running):
                (folder / "saved_model").mkdir(parents=True)
                (folder / "saved_model" / "saved_model.pb").write_bytes(b"half written")
            # A kill between writing a config's temporary and renaming it.
            base = tmp_path / "base"
            stale_config = base / f".batching.config.tmp-{dead.pid}-140230-0"
            stale_config.write_text("max_batch_size { value: 1")
            running_config = base / f".models.config.tmp-{alive.pid}-140231-0"
            running_config.write_text("model_config_list {")
            result = export_saved_model(
                exported_model.model, str(base), name="selfy",
                labels=exported_model.labels, top_k=3,
            )
            assert sorted(os.listdir(model_dir)) == sorted(["1", running.name])
            assert result.version == 1
            assert sorted(os.listdir(base)) == sorted(
                ["batching.config", "models.config", "selfy", running_config.name]
            )
            assert (base / "batching.config").read_text() == batching_config_text()
            assert (base / "models.config").read_text() == models_config_text("selfy", "/models/selfy")
        finally:
            alive.kill()
            alive.wait()


def _raw_exchange(port: int, data: bytes, wait_s: float = WAIT_S) -> bytes:
    """Sends `data` on a fresh connection; returns all the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    return answer


def _closed_by_server(connection: socket.socket, wait_s: float, trickle: bytes = b"") -> bool:
    """Whether the server closes `connection` within `wait_s`, sending `trickle` a byte at a time."""
    import select

    deadline = time.monotonic() + wait_s
    index = 0
    while time.monotonic() < deadline:
        if index < len(trickle):
            try:
                connection.send(trickle[index : index + 1])
            except OSError:  # reset by the server
                return True
            index += 1
        readable, _, _ = select.select([connection], [], [], 0.2)
        if readable:
            try:
                if connection.recv(4096) == b"":
                    return True
            except OSError:
                return True
    return False


class TestHostileClients:
    """Inputs made to cost the server more than their size, or to hold it."""

    @pytest.mark.parametrize("depth", [600, 960, 5000])
    def test_deeply_nested_json_is_a_400_without_traceback(self, our_server, depth, caplog):
        nested = b"[" * depth + b"]" * depth
        bodies = {
            # Past Python's recursion limit the parser itself refuses it.
            "top level": (nested, "Is not an object" if depth < 1000 else "too deeply"),
            "columnar": (b'{"inputs": {"frames_jpeg": ' + nested + b"}}", "too deeply"),
            "row": (b'{"instances": ' + nested + b"}", "too deeply"),
            "unknown input": (b'{"inputs": {"other": ' + nested + b"}}", "too deeply"),
        }
        with caplog.at_level("ERROR"):
            for case, (body, message) in bodies.items():
                status, answer = _rest(our_server.rest_url, "POST", "/v1/models/selfy:predict", body)
                assert status == 400 and message in answer["error"], (case, answer)
        assert not caplog.records

    def test_grpc_uint8_values_out_of_range_are_invalid_argument(self, our_server):
        from tensorflow.core.framework import types_pb2

        for values in ([1000], [-5]):
            tensor = _declared_tensor([1, 1, 1, 1, 3], types_pb2.DT_UINT8, int_val=values * 3)
            with pytest.raises(grpc.RpcError) as raised:
                _grpc_predict(our_server.grpc_target, {"frames": tensor}, "predict_frames")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, values
            assert "must be in [0, 255]" in raised.value.details()

    def test_non_ascii_digits_in_version_and_content_length(self, exported_model, rest_backend):
        # "²" (U+00B2) is a digit to str.isdigit() but not to int(). Sent
        # percent-encoded it reaches the version check; sent as the raw
        # Latin-1 byte 0xB2, http.server reads it as "²" while aiohttp's
        # parser refuses the request target.
        raw_reason, length_reason = {
            "threads": (b"Failed to convert version", b"A valid Content-Length header is required"),
            "aiohttp": (b"Invalid char in url path", b"Invalid character in Content-Length"),
        }[rest_backend]
        with _model_server(exported_model.base, rest_backend=rest_backend) as server:
            port = server.rest.port
            for method in (b"GET", b"POST"):
                for version, reason in ((b"%C2%B2", b"Failed to convert version"), (b"\xb2", raw_reason)):
                    answer = _raw_exchange(
                        port,
                        method + b" /v1/models/selfy/versions/" + version + b" HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                    )
                    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
                    assert reason in answer and b'{"error": ' in answer, answer[:300]
            # A bad Content-Length answers 400 and closes: the body's end is unknown.
            answer = _raw_exchange(
                port,
                b"POST /v1/models/selfy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n{}",
            )
            assert answer.startswith(b"HTTP/1.1 400") and length_reason in answer, answer[:200]
            assert b"Connection: close" in answer

    def test_rest_client_shows_413_for_a_body_over_the_cap(self, exported_model, rest_backend):
        from serving.server import RequestLimits

        with _model_server(exported_model.base, rest_backend=rest_backend, limits=RequestLimits(max_request_bytes=64 << 10)) as server:
            client = RestClient(server.rest_url)
            # More than the loopback buffers take unread: the server answers
            # from the headers and closes while the client is still sending.
            status, payload = client.request("POST", "/v1/models/selfy:predict", b" " * (16 << 20))
            assert status == 413 and b"--max-request-mb" in payload
            # The client reconnects for the next request.
            assert client.predict({"frames": FRAMES}, "predict_frames")["logits"].shape == (1, 5)
            client.close()

    def test_model_info_that_inflates_is_refused_before_reading(self, tmp_path):
        import zipfile

        from selfy_tf.run_dir import MAX_MODEL_INFO_BYTES, read_model_info

        path = tmp_path / "bomb.keras"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("selfy.json", b'{"eval_view": {}' + b" " * (4 * MAX_MODEL_INFO_BYTES) + b"}")
        assert path.stat().st_size < MAX_MODEL_INFO_BYTES // 10
        with pytest.raises(ValueError, match=f"selfy.json is larger than {MAX_MODEL_INFO_BYTES} bytes"):
            read_model_info(str(path))

    def test_versions_with_hostile_assets_are_skipped_and_others_load(self, model_copy):
        from serving.model_store import MAX_ASSET_BYTES

        model_dir = model_copy / "selfy"
        expected = {}
        with _model_server(model_copy) as server:
            client = RestClient(server.rest_url)
            for version, bad_asset in ((2, "fifo"), (3, "dev_zero"), (4, "oversized")):
                staging = model_dir / f".copy-{version}"
                shutil.copytree(model_dir / "1", staging)
                labels = staging / "assets" / "labels.txt"
                labels.unlink()
                if bad_asset == "fifo":  # would block the reader forever
                    os.mkfifo(labels)
                elif bad_asset == "dev_zero":  # would never end
                    os.symlink("/dev/zero", labels)
                else:
                    with open(labels, "wb") as handle:  # sparse: no disk used
                        handle.truncate(MAX_ASSET_BYTES + 1)
                expected[version] = "at most" if bad_asset == "oversized" else "not a regular file"
                os.rename(staging, model_dir / str(version))
            _wait_for(lambda: _states(client) == {1: "AVAILABLE", 2: "END", 3: "END", 4: "END"},
                      WAIT_S, "versions 2 to 4 to fail")
            for entry in client.status()["model_version_status"]:
                if int(entry["version"]) in expected:
                    message = entry["status"]["error_message"]
                    assert "labels.txt" in message and expected[int(entry["version"])] in message
            assert _serving_version(client) == 1
            shutil.copytree(model_dir / "1", model_dir / ".copy-5")
            os.rename(model_dir / ".copy-5", model_dir / "5")
            _wait_for(lambda: _serving_version(client) == 5, WAIT_S, "version 5 to serve")
            assert client.predict({"frames": FRAMES}, "predict_frames")["logits"].shape == (1, 5)
            client.close()

    def test_a_load_that_hangs_is_given_up_and_others_load(self, model_copy, monkeypatch):
        import threading

        from serving import model_store

        release = threading.Event()
        original_init = model_store.LoadedVersion.__init__

        def hanging_init(self, path, version):
            if version == 2:
                release.wait(WAIT_S)
            original_init(self, path, version)

        monkeypatch.setattr(model_store.LoadedVersion, "__init__", hanging_init)
        model_dir = model_copy / "selfy"
        try:
            with _model_server(model_copy) as server:
                client = RestClient(server.rest_url)
                # Short only for the hanging load: real loads here take seconds.
                server.store.load_timeout_s = 0.5
                shutil.copytree(model_dir / "1", model_dir / ".copy-2")
                os.rename(model_dir / ".copy-2", model_dir / "2")
                _wait_for(lambda: _states(client).get(2) == "END", WAIT_S, "version 2 to time out")
                message = client.status()["model_version_status"][0]["status"]["error_message"]
                assert "did not finish within 0.5 s" in message and "--load-timeout" in message
                assert _serving_version(client) == 1
                server.store.load_timeout_s = WAIT_S
                shutil.copytree(model_dir / "1", model_dir / ".copy-3")
                os.rename(model_dir / ".copy-3", model_dir / "3")
                _wait_for(lambda: _serving_version(client) == 3, WAIT_S, "version 3 to serve")
                client.close()
        finally:
            release.set()

    def test_slow_headers_are_cut_at_the_timeout(self, exported_model, rest_backend):
        with _model_server(exported_model.base, rest_backend=rest_backend, rest_timeout_s=1.0) as server:
            connection = socket.create_connection(("127.0.0.1", server.rest.port), timeout=10)
            # One byte every 0.2 s: each read is quick, the whole never ends.
            trickle = b"GET /v1/models/selfy HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 10_000
            assert _closed_by_server(connection, WAIT_S, trickle)
            connection.close()
            assert _rest(server.rest_url, "GET", "/v1/models/selfy")[0] == 200

    def test_a_client_that_takes_no_replies_is_cut_at_the_timeout(self, exported_model, rest_backend, caplog):
        import threading

        with _model_server(exported_model.base, rest_backend=rest_backend, rest_threads=1, rest_timeout_s=1.0) as server:
            reader = socket.socket()
            # A small receive window: the replies fill it and the server's buffers.
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect(("127.0.0.1", server.rest.port))
            pipelined = b"GET /v1/models/selfy/metadata HTTP/1.1\r\nHost: x\r\n\r\n" * 4000

            def send():
                try:
                    reader.sendall(pipelined)
                except OSError:  # cut by the server
                    pass

            sender = threading.Thread(target=send, daemon=True)
            with caplog.at_level("DEBUG", logger="serving.server"):
                sender.start()
                # The reader holds the only connection: the next client gets 503
                # until the server gives up on the reader.
                _wait_for(lambda: _rest(server.rest_url, "GET", "/v1/models/selfy")[0] == 200,
                          WAIT_S, "the reader to be cut")
            reader.close()
            sender.join(WAIT_S)
        # aiohttp's reply deadline, or http.server's timeout on each write.
        cut = {"aiohttp": "not taken within 1 s", "threads": "timed out"}[rest_backend]
        assert any(cut in record.getMessage() for record in caplog.records)

    def test_aiohttp_lowers_the_switch_interval_while_it_serves(self, exported_model, monkeypatch):
        """The event loop does all socket I/O: it must not wait 5 ms for the GIL each time."""
        import sys

        from serving.server import rest

        # This module's own server (`our_server`) may be running: count from none.
        monkeypatch.setattr(rest._SwitchInterval, "_users", 0)
        outside = sys.getswitchinterval()
        sys.setswitchinterval(0.005)  # Python's default
        try:
            with _model_server(exported_model.base, rest_backend="aiohttp"):
                assert sys.getswitchinterval() == pytest.approx(0.0005)
                with _model_server(exported_model.base, rest_backend="aiohttp"):
                    assert sys.getswitchinterval() == pytest.approx(0.0005)
                assert sys.getswitchinterval() == pytest.approx(0.0005)  # one server still runs
            assert sys.getswitchinterval() == pytest.approx(0.005)
            with _model_server(exported_model.base, rest_backend="threads"):
                assert sys.getswitchinterval() == pytest.approx(0.005)
        finally:
            sys.setswitchinterval(outside)

    def test_idle_connection_flood_is_refused_at_once(self, exported_model, rest_backend):
        with _model_server(exported_model.base, rest_backend=rest_backend, rest_threads=2, rest_timeout_s=60.0) as server:
            port = server.rest.port
            idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
            try:
                # Refusals never wait on the idle sockets: 60 of them would
                # hold 2-second waits for far longer than this client's timeout.
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/v1/models/selfy")
                response = connection.getresponse()
                assert response.status == 503 and "--rest-threads" in json.loads(response.read())["error"]
                connection.close()
                # The idle ones beyond the threads got their 503 too.
                assert idle[-1].recv(4096).startswith(b"HTTP/1.1 503")
            finally:
                for connection in idle:
                    connection.close()
            _wait_for(lambda: _rest(server.rest_url, "GET", "/v1/models/selfy")[0] == 200,
                      WAIT_S, "a free REST thread")

    def test_body_bytes_in_flight_are_bounded_across_requests(self, exported_model, rest_backend):
        from serving.server import RequestLimits

        with _model_server(
            exported_model.base,
            rest_backend=rest_backend,
            limits=RequestLimits(max_request_bytes=64 << 10),
            rest_max_inflight_bytes=100 << 10,
        ) as server:
            port = server.rest.port
            length = 60 << 10
            head = (
                "POST /v1/models/selfy:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode("ascii")
            holder = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            holder.sendall(head + b"{")  # its body's bytes are reserved, not all sent

            def refused():
                answer = _raw_exchange(port, head + b" " * length)
                return answer if answer.startswith(b"HTTP/1.1 503") else None

            answer = _wait_for(refused, WAIT_S, "a 503 while the first body is in flight")
            assert b"Retry-After: 1" in answer and b"--rest-max-inflight-mb" in answer
            holder.sendall(b" " * (length - 1))
            assert holder.recv(4096).startswith(b"HTTP/1.1 400")  # parsed: not a predict body
            holder.close()
            # Released with its reply: the next body is read again.
            assert _raw_exchange(port, head + b" " * length).startswith(b"HTTP/1.1 400")

    def test_thin_frames_are_refused_before_any_resize(self, our_server, exported_model):
        import io

        from PIL import Image

        from serving.errors import ServingError
        from serving.model_store import LoadedVersion
        from serving.signatures import MAX_FRAME_ASPECT_RATIO

        thin = np.zeros((1, 4, 2, 2 * MAX_FRAME_ASPECT_RATIO + 1, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(thin[0, 0]).save(buffer, format="PNG")
        thin_png = np.array([[buffer.getvalue()] * 4], dtype=object)
        # In the graph (as TF Serving runs it), without the server's checks.
        loaded = LoadedVersion(os.path.join(exported_model.base, "selfy", "1"), 1)
        for signature, inputs in (("predict_frames", {"frames": thin}),
                                  ("serving_default", {"frames_jpeg": thin_png})):
            with pytest.raises(ServingError) as raised:
                loaded.run(signature, inputs)
            assert f"at most {MAX_FRAME_ASPECT_RATIO} times longer" in raised.value.message, signature
        # At the limit, frames pass.
        square_ish = np.zeros((1, 4, 2, 2 * MAX_FRAME_ASPECT_RATIO, 3), np.uint8)
        assert loaded.run("predict_frames", {"frames": square_ish})["logits"].shape == (1, 5)
        # In the server, before batching, over both protocols.
        for client in (RestClient(our_server.rest_url), GrpcClient(our_server.grpc_target)):
            for signature, inputs in (("predict_frames", {"frames": thin}),
                                      ("serving_default", {"frames_jpeg": thin_png})):
                with pytest.raises(ClientError) as raised:
                    client.predict(inputs, signature)
                assert raised.value.status in (400, grpc.StatusCode.INVALID_ARGUMENT)
                assert f"at most {MAX_FRAME_ASPECT_RATIO} times longer" in raised.value.message
            client.close()
