"""Export for TF Serving, clients, a protocol-compatible local server, TFLite.

    from serving import export_saved_model, RestClient, GrpcClient, ModelServer

Names are imported on first use, so `import serving` stays light.
"""

from __future__ import annotations

from selfy_tf._lazy import lazy_exports

_EXPORTS = {
    "export_saved_model": "serving.export",
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


__getattr__, __dir__ = lazy_exports("serving", _EXPORTS, globals())
