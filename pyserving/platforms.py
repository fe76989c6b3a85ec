"""Model platform names (model_config_list's `model_platform`) and the runtime class that serves each.

A leaf: config validates platform names against it without importing any runtime, and the runtime registry
imports a runtime's module only when a model needs it.
"""

from __future__ import annotations

PLATFORMS: dict[str, str] = {
    "tensorflow": "pyserving.runtimes.tensorflow:TensorFlowRuntime",
    # A runtime with no framework at all (a JSON file describes the model): tests and benchmarks of the server's
    # own cost use it, and it shows what a runtime must provide.
    "memory": "pyserving.runtimes.memory:MemoryRuntime",
    "onnx": "pyserving.runtimes.onnx:OnnxRuntime",
    "python": "pyserving.runtimes.python:PythonRuntime",
    "pytorch": "pyserving.runtimes.pytorch:TorchRuntime",
    "tflite": "pyserving.runtimes.tflite:TfLiteRuntime",
    # Each version directory served by the runtime its files call for (an explicit choice: "" stays tensorflow).
    "auto": "pyserving.runtimes.auto:AutoRuntime",
}
