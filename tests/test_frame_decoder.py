"""The server's own decoding of `serving_default` requests (serving.frame_decoder).

With batching, the server decodes JPEG frames in the request's thread and
batches the clips through `predict_frames`; the reference is the
SavedModel's own `serving_default` graph, which decodes inside.
"""

from __future__ import annotations

import json
import os
import shutil

import grpc
import numpy as np
import pytest
from test_serving_server import _jpeg

from selfy_tf.run_dir import SAVED_MODEL_INFO
from serving.errors import ServingError
from serving.model_store import LoadedVersion


def _mixed_size_clip(seed: int = 0) -> np.ndarray:
    """`[1, 7]` JPEG frames of three sizes: sampling, resize and crop all act."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (64, 48), (33, 90)] * 3
    frames = [_jpeg(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in sizes[:7]]
    return np.array([frames], dtype=object)


def _version_copy(exported_model, tmp_path, edit_record) -> str:
    path = tmp_path / "1"
    shutil.copytree(os.path.join(exported_model.base, "selfy", "1"), path)
    edit_record(path / SAVED_MODEL_INFO)
    return str(path)


@pytest.fixture(scope="module")
def loaded(exported_model):
    return LoadedVersion(os.path.join(exported_model.base, "selfy", "1"), 1)


def test_decoded_clips_give_the_graphs_logits(loaded):
    assert loaded.frame_decoder is not None
    # One clip and two clips of frames of several sizes.
    for clip in (_mixed_size_clip(0), np.concatenate([_mixed_size_clip(1), _mixed_size_clip(2)])):
        decoded = loaded.decode_frames(clip)
        assert decoded.shape == (len(clip), 4, 32, 32, 3) and decoded.dtype == np.uint8
        whole = loaded.run("serving_default", {"frames_jpeg": clip})
        parts = loaded.run("predict_frames", {"frames": decoded})
        np.testing.assert_allclose(parts["logits"], whole["logits"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(parts["top_k_labels"], whole["top_k_labels"])


def test_a_bad_frame_gets_the_graphs_error(loaded):
    clip = _mixed_size_clip()
    clip[0, 2] = b"\xff\xd8 not really a JPEG"
    with pytest.raises(ServingError) as from_graph:
        loaded.run("serving_default", {"frames_jpeg": clip})
    with pytest.raises(ServingError) as from_decoder:
        loaded.decode_frames(clip)
    assert from_decoder.value.code == from_graph.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert from_decoder.value.message == from_graph.value.message
    assert "{{" not in from_decoder.value.message and "[[" not in from_decoder.value.message


def test_versions_whose_record_is_missing_or_wrong_decode_in_their_graph(exported_model, tmp_path):
    def wrong_view(record_path):
        record = json.loads(record_path.read_text())
        record["eval_view"] = {"scale_size": 64}  # the graph resizes to another size
        record_path.write_text(json.dumps(record))

    for name, edit in (("missing", lambda path: path.unlink()), ("wrong", wrong_view)):
        version = LoadedVersion(_version_copy(exported_model, tmp_path / name, edit), 1)
        assert version.frame_decoder is None, name
        clip = _mixed_size_clip()
        assert version.run("serving_default", {"frames_jpeg": clip})["logits"].shape == (1, 5)
