"""Loads the versions of one exported model and picks up new ones while serving.

Follows TF Serving's default `latest` version policy: the newest
`num_versions` numbered folders under `BASE/<name>` that load are served.
A version that appears later is loaded (and warmed up with its
`assets.extra` requests) in the background, then becomes the default;
versions that fall out of the policy are unloaded, always after their
replacement is serving. When the newest version's folder disappears, the
next newest on disk is loaded and takes over.

A version that fails to load (e.g. caught mid-copy) is reported in the
status with its error and is not counted by the policy, so older versions
keep serving. It is tried again once its files change (size or mtime),
no sooner than a back-off that doubles from `RETRY_BACKOFF_S` to
`MAX_RETRY_BACKOFF_S` with each failure.

Loading is bounded: entries that are not regular files (a FIFO, a link to
a device) and files under `assets/` or `assets.extra/` over
`MAX_ASSET_BYTES` are refused before anything is read, and a load that
takes longer than `load_timeout_s` is given up (its thread is left to
finish on its own; the version is not tried again while it runs), so a bad
version can neither block the polling thread nor take down what serves.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat as stat_lib
import threading
import time
from typing import Mapping

import grpc
import numpy as np
import tensorflow as tf

from serving import export as export_lib
from serving import signatures as signatures_lib
from serving import warmup as warmup_lib
from serving.errors import ServingError, invalid_argument, not_found
from serving.frame_decoder import FrameDecoder, probe_clip

logger = logging.getLogger(__name__)

# ModelVersionStatus.State names (tensorflow_serving/apis/get_model_status.proto).
STATE_LOADING = "LOADING"
STATE_AVAILABLE = "AVAILABLE"
STATE_END = "END"

RETRY_BACKOFF_S = 1.0
MAX_RETRY_BACKOFF_S = 30.0
DEFAULT_LOAD_TIMEOUT_S = 300.0
# Files a load reads whole into memory (class names, warm-up requests, the
# view record) are capped; the weights under `variables/` are not.
MAX_ASSET_BYTES = 64 << 20
_CAPPED_FOLDERS = ("assets", "assets.extra")


def _folder_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file under `path`: changes when a
    copy into the folder progresses or a repair lands."""
    entries = []
    for root, folders, files in os.walk(path):
        folders.sort()
        for file_name in sorted(files):
            file_path = os.path.join(root, file_name)
            try:
                stat = os.stat(file_path)
            except OSError:  # removed while walking
                continue
            entries.append((os.path.relpath(file_path, path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def check_version_files(path: str) -> None:
    """Refuses a version folder a load could hang on or exhaust memory with.

    Every entry must be a regular file or a folder (links are followed),
    and files under `assets/` and `assets.extra/` hold at most
    `MAX_ASSET_BYTES`. Nothing is opened: a FIFO would block the reader, a
    link to `/dev/zero` would never end.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    pending, seen = [path], set()
    while pending:
        folder = pending.pop()
        folder_stat = os.stat(folder)
        if (folder_stat.st_dev, folder_stat.st_ino) in seen:  # a link loop
            continue
        seen.add((folder_stat.st_dev, folder_stat.st_ino))
        for entry in sorted(os.listdir(folder)):
            entry_path = os.path.join(folder, entry)
            try:
                entry_stat = os.stat(entry_path)
            except OSError as error:
                raise ValueError(f"{entry_path} cannot be read: {error.strerror}.") from error
            if stat_lib.S_ISDIR(entry_stat.st_mode):
                pending.append(entry_path)
                continue
            if not stat_lib.S_ISREG(entry_stat.st_mode):
                raise ValueError(
                    f"{entry_path} is not a regular file (a FIFO, device or socket, or a link "
                    "to one); a SavedModel holds regular files only."
                )
            top = os.path.relpath(entry_path, path).split(os.sep)[0]
            if top in _CAPPED_FOLDERS and entry_stat.st_size > MAX_ASSET_BYTES:
                raise ValueError(
                    f"{entry_path} holds {entry_stat.st_size} bytes; files under "
                    f"{' and '.join(_CAPPED_FOLDERS)} may hold at most {MAX_ASSET_BYTES}."
                )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _graph_error_message(error: Exception) -> str:
    """The line of a TensorFlow runtime error that says what was wrong.

    A failing signature reports `Graph execution error:`, then the node and
    stack, then the op's own message (e.g. `Unknown image file format`)
    followed by `[[{{node ...}}]]`; a function called eagerly puts
    `{{function_node ...}}` before the message.
    """
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.strip().splitlines()]
    useful = [
        line
        for line in lines
        if line
        and not line.startswith(("Graph execution error", "Detected at node", "[[", "File \""))
        and not line.endswith(":")
    ]
    text = useful[-1] if useful else (lines[0] if lines else type(error).__name__)
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    return text.split("\t [[")[0].split(" [[")[0].strip()


@dataclasses.dataclass
class _LoadFailure:
    fingerprint: tuple
    attempts: int
    retry_at: float


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """One callable signature of a loaded version.

    Attributes:
        name: the signature name.
        inputs: input name → `tf.TensorSpec` (dtype and shape, batch first).
        function: the concrete function; takes the inputs as keywords.
    """

    name: str
    inputs: Mapping[str, tf.TensorSpec]
    function: object


class LoadedVersion:
    """A SavedModel version loaded in this process.

    Args:
        path: the version folder.
        version: its number.
    """

    def __init__(self, path: str, version: int):
        self.path = path
        self.version = version
        self._saved_model = tf.saved_model.load(path)
        self.signature_defs = export_lib.saved_model_signature_defs(path)
        self.signatures: dict[str, SignatureInfo] = {}
        for name, function in self._saved_model.signatures.items():
            _, keyword_specs = function.structured_input_signature
            self.signatures[name] = SignatureInfo(name, dict(keyword_specs), function)
        self._frame_decoder: FrameDecoder | None = None
        self._frame_decoder_checked = False
        self._frame_decoder_lock = threading.Lock()

    def signature(self, name: str | None) -> SignatureInfo:
        """The signature `name` (default: `serving_default`).

        Raises:
            ServingError: INVALID_ARGUMENT naming the known signatures.
        """
        name = name or "serving_default"
        if name not in self.signatures:
            raise invalid_argument(
                f"Serving signature name: \"{name}\" not found in signature def. "
                f"Known signatures: {sorted(self.signatures)}."
            )
        return self.signatures[name]

    def run(self, signature_name: str | None, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one signature on already validated numpy inputs.

        Raises:
            ServingError: INVALID_ARGUMENT when the graph rejects the data
                (e.g. bytes that are not an image).
        """
        signature = self.signature(signature_name)
        tensors = {key: tf.constant(value, dtype=signature.inputs[key].dtype) for key, value in inputs.items()}
        try:
            outputs = signature.function(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid_argument(_graph_error_message(error)) from error
        return {key: value.numpy() for key, value in outputs.items()}

    @property
    def frame_decoder(self) -> FrameDecoder | None:
        """This version's `FrameDecoder`, or None where frames must be decoded in the graph.

        Built and checked on first use (about a second: a trace and a probe
        clip run both ways), not at load, so servers that never need it
        never pay for it.
        """
        with self._frame_decoder_lock:
            if not self._frame_decoder_checked:
                self._frame_decoder = self._verified_frame_decoder()
                self._frame_decoder_checked = True
        return self._frame_decoder

    def _verified_frame_decoder(self) -> FrameDecoder | None:
        """This version's `FrameDecoder`, if a probe clip gets the same logits through it.

        None for versions without a view record or `predict_frames`, and
        for any whose probe differs or fails: those run `serving_default` whole.
        """
        if not {signatures_lib.SERVING_DEFAULT, signatures_lib.PREDICT_FRAMES} <= set(self.signatures):
            return None
        try:
            decoder = FrameDecoder.from_saved_model(self.path)
            if decoder is None:
                return None
            clip = probe_clip(decoder.config)
            whole = self.run(signatures_lib.SERVING_DEFAULT, {signatures_lib.JPEG_INPUT_KEY: clip})
            parts = self.run(signatures_lib.PREDICT_FRAMES, {signatures_lib.FRAMES_INPUT_KEY: decoder(clip)})
        except Exception as error:  # the version still serves, decoding in its graph
            logger.warning("version %d decodes frames in its graph: %s", self.version, _first_line(error))
            return None
        expected, received = whole[signatures_lib.LOGITS_KEY], parts[signatures_lib.LOGITS_KEY]
        if expected.shape != received.shape or not np.allclose(
            received, expected, rtol=0, atol=1e-5 * (1 + np.abs(expected).max())
        ):
            logger.warning(
                "version %d decodes frames in its graph: its view record does not reproduce "
                "serving_default's decoding", self.version,
            )
            return None
        return decoder

    def decode_frames(self, frames_jpeg: np.ndarray) -> np.ndarray:
        """Decodes a `serving_default` request's frames as its graph would (`frame_decoder`).

        Raises:
            ServingError: INVALID_ARGUMENT for a frame the decoder refuses,
                with the graph's own message.
        """
        try:
            return self.frame_decoder(frames_jpeg)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid_argument(_graph_error_message(error)) from error

    def warm_up(self) -> int:
        """Replays the version's warm-up requests; returns how many ran."""
        count = 0
        for log in warmup_lib.read_warmup_requests(self.path):
            request = log.predict_log.request
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            self.run(request.model_spec.signature_name, inputs)
            count += 1
        return count


@dataclasses.dataclass
class VersionStatus:
    """State of one version as `GetModelStatus` reports it."""

    version: int
    state: str
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class ModelStore:
    """The served versions of the model `name` under `model_base_path`.

    Args:
        model_base_path: `BASE/<name>`, holding numbered version folders.
        name: the model name requests use.
        num_versions: how many of the newest versions to serve (TF Serving's
            `latest { num_versions }` policy). Default 1.
        version_labels: label → version (e.g. `{"stable": 1}`), for
            `/labels/<label>` requests.
        warmup: replay each version's warm-up requests after loading it.
        load_timeout_s: longest a version's load and warm-up may take;
            beyond it the version is reported as failed and the others
            keep loading and serving. Default 300.

    Example:

    ```python
    store = ModelStore("exported/selfy", name="selfy")
    store.refresh()
    store.get().version
    ```
    """

    def __init__(
        self,
        model_base_path: str,
        *,
        name: str,
        num_versions: int = 1,
        version_labels: Mapping[str, int] | None = None,
        warmup: bool = True,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ):
        if num_versions < 1:
            raise ValueError(f"`num_versions` must be at least 1. Received: {num_versions}.")
        if load_timeout_s <= 0:
            raise ValueError(f"`load_timeout_s` must be positive. Received: {load_timeout_s}.")
        if not os.path.isdir(model_base_path):
            raise FileNotFoundError(
                f"model base path not found: {model_base_path}. Expected BASE/<name> "
                "holding numbered SavedModel versions (see `selfy export`)."
            )
        self.model_base_path = model_base_path
        self.name = name
        self.num_versions = int(num_versions)
        self.version_labels = dict(version_labels or {})
        self.warmup = warmup
        self.load_timeout_s = float(load_timeout_s)
        # Versions whose load outlived `load_timeout_s`, with its thread.
        self._stuck_loads: dict[int, threading.Thread] = {}
        self._loaded: dict[int, LoadedVersion] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failures: dict[int, _LoadFailure] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[int]:
        """Loads new versions and unloads old ones; returns the served versions."""
        with self._refresh_lock:
            present = export_lib.list_versions(self.model_base_path)
            serving = []
            # Newest first: a version that does not load is skipped, so the
            # policy falls back to the next newest and never drops a serving
            # version for a newer one that failed.
            for version in reversed(present):
                if len(serving) == self.num_versions:
                    break
                if version not in self._loaded and self._may_load(version):
                    self._load(version)
                if version in self._loaded:
                    serving.append(version)
            wanted = set(serving) | (set(self.version_labels.values()) & set(present))
            with self._lock:
                for version in set(self._loaded) - wanted:
                    del self._loaded[version]
                    self._status[version].state = STATE_END
                    logger.info("unloaded %s version %d", self.name, version)
                for version in set(self._status) - set(present) - set(self._loaded):
                    del self._status[version]
                for version in set(self._failures) - set(present):
                    del self._failures[version]
                return sorted(self._loaded)

    def _may_load(self, version: int) -> bool:
        stuck = self._stuck_loads.get(version)
        if stuck is not None:
            if stuck.is_alive():
                return False
            del self._stuck_loads[version]
        failure = self._failures.get(version)
        if failure is None:
            return True
        if time.monotonic() < failure.retry_at:
            return False
        path = os.path.join(self.model_base_path, str(version))
        return _folder_fingerprint(path) != failure.fingerprint

    def _load(self, version: int) -> None:
        path = os.path.join(self.model_base_path, str(version))
        # Taken before loading: files that change during the attempt count
        # as a change, so a copy still in progress is tried again.
        fingerprint = _folder_fingerprint(path)
        with self._lock:
            self._status[version] = VersionStatus(version, STATE_LOADING)
        try:
            check_version_files(path)
            loaded, warmed = self._load_in_thread(path, version)
        except Exception as error:  # a broken version must not stop the server
            previous = self._failures.get(version)
            attempts = 1 if previous is None else previous.attempts + 1
            backoff_s = min(RETRY_BACKOFF_S * 2 ** (attempts - 1), MAX_RETRY_BACKOFF_S)
            self._failures[version] = _LoadFailure(fingerprint, attempts, time.monotonic() + backoff_s)
            logger.error(
                "cannot load %s version %d from %s (attempt %d; tried again when its files "
                "change): %s",
                self.name, version, path, attempts, _first_line(error),
            )
            with self._lock:
                self._status[version] = VersionStatus(
                    version, STATE_END, grpc.StatusCode.UNKNOWN, _first_line(error)
                )
            return
        self._failures.pop(version, None)
        with self._lock:
            self._loaded[version] = loaded
            self._status[version] = VersionStatus(version, STATE_AVAILABLE)
        logger.info(
            "loaded %s version %d from %s (%d warm-up requests)", self.name, version, path, warmed
        )

    def _load_in_thread(self, path: str, version: int) -> tuple[LoadedVersion, int]:
        """Loads and warms up `version` on its own thread, for at most `load_timeout_s`.

        Raises:
            TimeoutError: when the load is still running after the timeout
                (the version is then not tried again until it ends).
            Exception: whatever the load raised.
        """
        outcome: dict[str, object] = {}
        done = threading.Event()

        def load() -> None:
            try:
                loaded = LoadedVersion(path, version)
                outcome["result"] = (loaded, loaded.warm_up() if self.warmup else 0)
            except BaseException as error:  # handed to the polling thread
                outcome["error"] = error
            finally:
                done.set()

        thread = threading.Thread(target=load, name=f"load-{self.name}-{version}", daemon=True)
        thread.start()
        if not done.wait(self.load_timeout_s):
            self._stuck_loads[version] = thread
            raise TimeoutError(
                f"the load did not finish within {self.load_timeout_s:g} s "
                "(`selfy serve --load-timeout`); it is not tried again while it runs"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def get(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The version asked for: a number, a label, or the newest loaded.

        Raises:
            ServingError: NOT_FOUND if it is not loaded.
        """
        if label is not None:
            if label not in self.version_labels:
                raise invalid_argument(
                    f"Unrecognized servable version label: {label}. Known labels: "
                    f"{sorted(self.version_labels)}."
                )
            version = self.version_labels[label]
        with self._lock:
            if version is None:
                if not self._loaded:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                return self._loaded[max(self._loaded)]
            if version not in self._loaded:
                raise not_found(
                    f"Servable not found for request: Specific({self.name}, {version})"
                )
            return self._loaded[version]

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        """Status of every known version (or of `version`), newest first.

        Raises:
            ServingError: NOT_FOUND for a version that was never seen.
        """
        with self._lock:
            statuses = [dataclasses.replace(status) for status in self._status.values()]
        if version is not None:
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise not_found(
                    f"Could not find version {version} of model {self.name}"
                )
        return sorted(statuses, key=lambda status: -status.version)

    def start(self, poll_interval_s: float = 1.0) -> None:
        """Loads what is there now, then polls for new versions in a thread."""
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(poll_interval_s,), name="model-store-poll", daemon=True
        )
        self._thread.start()

    def _poll(self, poll_interval_s: float) -> None:
        while not self._stop.wait(poll_interval_s):
            try:
                self.refresh()
            except OSError as error:
                logger.warning("polling %s failed: %s", self.model_base_path, error)

    def stop(self) -> None:
        """Stops polling (loaded versions stay usable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


__all__ = ["LoadedVersion", "ModelStore", "ServingError", "SignatureInfo", "VersionStatus"]
