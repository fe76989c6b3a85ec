"""The ceiling of a Python gRPC server here: a bare grpc.aio servicer of TF Serving's Predict.

    python bench/peers/grpc_servicer.py PORT

`/tensorflow.serving.PredictionService/Predict` decodes the PredictRequest (grpc's deserializer, as any servicer
does) and answers one fixed PredictResponse (the small model's output for one row: 4 floats, TF Serving's
float_val), serialized anew each call. No model, no thread hop, no metrics, no interceptors; grpc.aio's default
server, one process. It does the least a Python gRPC model server can do per request: the floor pyserving's gRPC
front end is measured against (bench/floor.py).

    python bench/peers/grpc_servicer.py PORT --hop

The same, but each call first makes one round trip to a second process (bench/peers/hop.py: an echo over a UNIX
socket pair, ids written once per event-loop turn, as pyserving's channel to its model process writes frames): the
floor of any server whose model lives in another process, as pyserving's front ends do.
"""

import asyncio
import sys
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parent),  # hop.py, also under PYTHONSAFEPATH
                str(Path(__file__).resolve().parents[2])]  # the messages only: TF Serving's wire format
from pyserving.codecs.tfserving.protos.predict_pb2 import PredictRequest, PredictResponse  # noqa: E402

import hop  # noqa: E402  (bench/peers/hop.py: the same round trip as the bare starlette app's --hop)

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


async def main(port: int, with_hop: bool) -> None:
    handler = predict
    if with_hop:
        channel = await hop.connect(hop.fork_echo())

        async def handler(request: PredictRequest, context: grpc.aio.ServicerContext) -> PredictResponse:
            await channel.round_trip()
            return ANSWER

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=PredictRequest.FromString,
            response_serializer=PredictResponse.SerializeToString)},
    ),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare grpc.aio servicer on 127.0.0.1:{port}{' (one round trip to another process per call)' if with_hop else ''}",
          flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--hop" in sys.argv[2:]))
