"""The ceiling of a Python gRPC server here: a bare grpc.aio servicer of TF Serving's Predict.

    python bench/peers/grpc_servicer.py PORT

`/tensorflow.serving.PredictionService/Predict` decodes the PredictRequest (grpc's deserializer, as any servicer
does) and answers one fixed PredictResponse (the small model's output for one row: 4 floats, TF Serving's
float_val), serialized anew each call. No model, no thread hop, no metrics, no interceptors; grpc.aio's default
server, one process. It does the least a Python gRPC model server can do per request: the floor pyserving's gRPC
front end is measured against (bench/floor.py).
"""

import asyncio
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the messages only: TF Serving's wire format
from pyserving.codecs.tfserving.protos.predict_pb2 import PredictRequest, PredictResponse  # noqa: E402

ANSWER = PredictResponse()
ANSWER.model_spec.name = "small"
ANSWER.model_spec.version.value = 1
ANSWER.model_spec.signature_name = "serving_default"
_y = ANSWER.outputs["y"]
_y.dtype = 1  # DT_FLOAT
_y.tensor_shape.dim.add(size=1)
_y.tensor_shape.dim.add(size=4)
_y.float_val.extend([0.25, -0.5, 0.75, 1.0])


async def predict(request: PredictRequest, context: grpc.aio.ServicerContext) -> PredictResponse:
    return ANSWER


async def main(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=PredictRequest.FromString,
            response_serializer=PredictResponse.SerializeToString)},
    ),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare grpc.aio servicer on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
