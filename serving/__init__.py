"""Export for TF Serving, clients, a protocol-compatible local server, TFLite.

    from serving import export_saved_model, RestClient, GrpcClient, ModelServer

Names are imported on first use, so `import serving` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_saved_model": "serving.export",
    "load_export_source": "serving.export",
    "ExportResult": "serving.export",
    "SignatureConfig": "serving.signatures",
    "RestClient": "serving.client",
    "GrpcClient": "serving.client",
    "LocalClient": "serving.client",
    "ClientError": "serving.client",
    "ClipPrediction": "serving.client",
    "ModelServer": "serving.server",
    "ModelStore": "serving.model_store",
    "BatchingOptions": "serving.batching",
    "DynamicBatcher": "serving.batching",
    "ServingError": "serving.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
