"""The local model server: a model store, a batcher, and REST + gRPC front ends.

A stand-in for `tensorflow_model_server` that speaks the same protocols,
for development and tests. It listens on 127.0.0.1 only.

Example:

```python
with ModelServer("exported", name="selfy", rest_port=0, grpc_port=0) as server:
    print(server.rest_url, server.grpc_target)
```
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Mapping

from serving.batching import BatchingOptions, DynamicBatcher
from serving.model_store import DEFAULT_LOAD_TIMEOUT_S, ModelStore
from serving.server.grpc_service import GrpcServer
from serving.server.predictor import Predictor, RequestLimits
from serving.server.rest import DEFAULT_MAX_INFLIGHT_BYTES, LOOPBACK_HOST, AiohttpRestServer
from serving.server.rest_threaded import ThreadedRestServer

logger = logging.getLogger(__name__)

# REST front ends (`selfy serve --rest-backend`): the same API on
# `http.server` threads or on aiohttp's event loop (docs/serving.md).
REST_BACKENDS = {"threads": ThreadedRestServer, "aiohttp": AiohttpRestServer}
DEFAULT_REST_BACKEND = "aiohttp"


class ModelServer:
    """Serves `BASE/<name>` over REST and gRPC.

    Args:
        base_path: the export base folder (holding `<name>/<version>/`).
        name: the model name.
        rest_port: REST port (0: a free one; None: no REST). Default 8501.
        grpc_port: gRPC port (0: a free one; None: no gRPC). Default 8500.
        batching: `BatchingOptions`, or None to run requests one by one.
        poll_interval_s: how often to look for new versions. Default 1.0.
        num_versions: newest versions served. Default 1.
        version_labels: label → version for `/labels/<label>` requests.
        limits: `RequestLimits`, the caps on what one request may cost
            (clips, frames, frame size, bytes).
        rest_threads: REST connections open at once (more get 503), and
            the threads answering REST requests. Default 128.
        rest_timeout_s: REST deadline for a request's headers (idle
            keep-alive included), then for its body, then for its reply.
            Default 30.
        rest_max_inflight_bytes: REST request-body bytes held at once
            across connections (503 beyond). Default 256 MiB.
        rest_backend: the REST front end, one of `REST_BACKENDS`:
            `"aiohttp"` (one event loop, requests on a pool; the default)
            or `"threads"` (`http.server`, a thread per connection).
        warmup: replay warm-up requests when loading a version.
        load_timeout_s: longest a version's load and warm-up may take
            before it is given up. Default 300.

    Raises:
        PortInUseError: when a port is taken (before anything is loaded).
    """

    def __init__(
        self,
        base_path: str,
        *,
        name: str = "selfy",
        rest_port: int | None = 8501,
        grpc_port: int | None = 8500,
        batching: BatchingOptions | None = BatchingOptions(),
        poll_interval_s: float = 1.0,
        num_versions: int = 1,
        version_labels: Mapping[str, int] | None = None,
        limits: RequestLimits = RequestLimits(),
        rest_threads: int = 128,
        rest_timeout_s: float = 30.0,
        rest_max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        rest_backend: str = DEFAULT_REST_BACKEND,
        warmup: bool = True,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ):
        if rest_port is None and grpc_port is None:
            raise ValueError("Give `rest_port` or `grpc_port` (or both); received neither.")
        if rest_backend not in REST_BACKENDS:
            raise ValueError(
                f"Unknown `rest_backend`. Received: rest_backend={rest_backend!r}. "
                f"Expected one of {sorted(REST_BACKENDS)}."
            )
        self.store = ModelStore(
            os.path.join(base_path, name),
            name=name,
            num_versions=num_versions,
            version_labels=version_labels,
            warmup=warmup,
            load_timeout_s=load_timeout_s,
        )
        self.batcher = DynamicBatcher(batching) if batching is not None else None
        self.predictor = Predictor(self.store, self.batcher, limits)
        self.poll_interval_s = float(poll_interval_s)
        self._stopped = threading.Event()
        self.rest = self.grpc = None
        try:
            if rest_port is not None:
                self.rest = REST_BACKENDS[rest_backend](
                    self.predictor, rest_port, rest_threads, rest_timeout_s, rest_max_inflight_bytes
                )
            if grpc_port is not None:
                self.grpc = GrpcServer(self.predictor, grpc_port)
        except BaseException:
            # A taken port: release the other port and the batch threads.
            self.stop()
            raise

    @property
    def rest_url(self) -> str | None:
        return f"http://{LOOPBACK_HOST}:{self.rest.port}" if self.rest else None

    @property
    def grpc_target(self) -> str | None:
        return f"{LOOPBACK_HOST}:{self.grpc.port}" if self.grpc else None

    def start(self) -> "ModelServer":
        """Loads the newest version(s), starts polling and both front ends."""
        self.store.start(self.poll_interval_s)
        if not self.store.statuses():
            logger.warning("no version found yet under %s; waiting for one", self.store.model_base_path)
        for front_end in (self.rest, self.grpc):
            if front_end is not None:
                front_end.start()
        return self

    def wait(self) -> None:
        """Blocks until `stop` is called (or KeyboardInterrupt)."""
        self._stopped.wait()

    def stop(self) -> None:
        for front_end in (self.rest, self.grpc):
            if front_end is not None:
                front_end.stop()
        self.store.stop()
        if self.batcher is not None:
            self.batcher.close()
        self._stopped.set()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
