"""The ceiling of a Python HTTP server here: uvicorn + starlette + orjson doing the small model's math in numpy.

    python bench/peers/starlette_app.py WEIGHTS.npz PORT

POST /v1/models/small:predict takes TF Serving's row format ({"instances": [[16 floats]]}) and answers
{"predictions": [[4 floats]]}, computing relu(x @ w1 + b1) @ w2 + b2 with the small model's own weights. No
TensorFlow, no batching, one process; uvicorn's default event loop and HTTP parser (httptools when installed, as
pyserving uses), no proxy-header rewriting.

    python bench/peers/starlette_app.py WEIGHTS.npz PORT --hop

The same, but each request also makes one round trip to a second process (bench/peers/hop.py, as the bare gRPC
servicer's --hop): the floor of a REST server whose model lives in another process, as pyserving's front ends do.
"""

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hop.py, also under PYTHONSAFEPATH
import hop  # noqa: E402

HOP = "--hop" in sys.argv[3:]
weights = np.load(sys.argv[1])
w1, b1, w2, b2 = (weights[k] for k in ("w1", "b1", "w2", "b2"))


async def predict(request: Request) -> Response:
    x = np.asarray(orjson.loads(await request.body())["instances"], dtype=np.float32)
    if HOP:
        await channel.round_trip()
    y = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    return Response(orjson.dumps({"predictions": y.tolist()}), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"ok")


channel: hop.Hop


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global channel
    if HOP:
        channel = await hop.connect(echo_socket)
    yield


app = Starlette(routes=[
    Route("/v1/models/small:predict", predict, methods=["POST"]),
    Route("/readyz", ready, methods=["GET"]),
], lifespan=lifespan)

if __name__ == "__main__":
    if HOP:
        echo_socket = hop.fork_echo()  # before uvicorn's loop exists: the child has no loop to inherit
    # uvicorn picks httptools when installed; no proxy-header rewriting (pyserving runs the same way)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False,
                proxy_headers=False)
