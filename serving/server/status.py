"""Model status and metadata responses, as protos (gRPC) and as JSON (REST).

The REST bodies are the JSON mapping of the same protos with proto field
names, which is exactly what TF Serving's REST API returns.
"""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.errors import invalid_argument
from serving.model_store import LoadedVersion, ModelStore

SIGNATURE_DEF_FIELD = "signature_def"


def model_status_response(
    store: ModelStore, version: int | None = None
) -> get_model_status_pb2.GetModelStatusResponse:
    """`GetModelStatusResponse` for every version (or one version) of the model."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in store.statuses(version):
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
        entry.status.error_code = status.error_code.value[0]
        entry.status.error_message = status.error_message
    return response


def model_metadata_response(
    name: str, loaded: LoadedVersion, metadata_fields: list[str] | None = None
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """`GetModelMetadataResponse` holding the version's `SignatureDefMap`.

    Raises:
        ServingError: INVALID_ARGUMENT when a field other than
            `signature_def` is asked for (the only one TF Serving knows).
    """
    fields = list(metadata_fields or [SIGNATURE_DEF_FIELD])
    unknown = [field for field in fields if field != SIGNATURE_DEF_FIELD]
    if unknown:
        raise invalid_argument(
            f"Metadata field {unknown[0]} is not supported. Expected: {SIGNATURE_DEF_FIELD}."
        )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for signature_name, signature_def in loaded.signature_defs.items():
        signature_map.signature_def[signature_name].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = loaded.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def to_json(message) -> dict:
    """JSON mapping of a response proto with proto field names and defaults."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
