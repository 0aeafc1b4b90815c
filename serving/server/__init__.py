"""A local server speaking TF Serving's REST and gRPC protocols."""

from serving.server.model_server import ModelServer
from serving.server.predictor import RequestLimits

__all__ = ["ModelServer", "RequestLimits"]
