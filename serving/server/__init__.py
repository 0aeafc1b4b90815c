"""A local server speaking TF Serving's REST and gRPC protocols."""

from serving.server.model_server import ModelServer

__all__ = ["ModelServer"]
