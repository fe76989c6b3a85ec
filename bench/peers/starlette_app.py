"""The ceiling of a Python HTTP server here: uvicorn + starlette + orjson doing the small model's math in numpy.

    python bench/peers/starlette_app.py WEIGHTS.npz PORT

POST /v1/models/small:predict takes TF Serving's row format ({"instances": [[16 floats]]}) and answers
{"predictions": [[4 floats]]}, computing relu(x @ w1 + b1) @ w2 + b2 with the small model's own weights. No
TensorFlow, no batching, one process; uvicorn's default event loop and HTTP parser (httptools when installed, as
pyserving uses), no proxy-header rewriting.
"""

import sys

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

weights = np.load(sys.argv[1])
w1, b1, w2, b2 = (weights[k] for k in ("w1", "b1", "w2", "b2"))


async def predict(request: Request) -> Response:
    x = np.asarray(orjson.loads(await request.body())["instances"], dtype=np.float32)
    y = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    return Response(orjson.dumps({"predictions": y.tolist()}), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(routes=[
    Route("/v1/models/small:predict", predict, methods=["POST"]),
    Route("/readyz", ready, methods=["GET"]),
])

if __name__ == "__main__":
    # uvicorn picks httptools when installed; no proxy-header rewriting (pyserving runs the same way)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False,
                proxy_headers=False)
