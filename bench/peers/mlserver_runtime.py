"""Seldon MLServer custom runtime serving the small SavedModel (the way MLServer's docs write one).

Runs inside the MLServer venv (bench/batching.py puts this folder on PYTHONPATH); the model folder's
model-settings.json names `mlserver_runtime.SmallSavedModel` and gives the SavedModel version directory as
`parameters.uri`. With adaptive batching on, MLServer merges queued requests into one `predict` call.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from mlserver import MLModel  # noqa: E402
from mlserver.codecs import NumpyCodec  # noqa: E402
from mlserver.types import InferenceRequest, InferenceResponse  # noqa: E402


class SmallSavedModel(MLModel):
    async def load(self) -> bool:
        self._fn = tf.saved_model.load(self.settings.parameters.uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self._fn(x=tf.constant(x))["y"].numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
