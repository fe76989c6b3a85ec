"""pyserving: a model server that speaks TensorFlow Serving's REST and gRPC APIs."""

__version__ = "0.1.0"
