"""tensorflow.serving.Input -> serialized tf.Examples, shared by both front ends and by warm-up.

With a context, each example is the context's bytes followed by the example's: protobuf parsing merges
concatenated messages, which is exactly how TF Serving applies ExampleListWithContext.
"""

from __future__ import annotations

from pyserving.codecs.tfserving.protos import input_pb2

from pyserving.errors import Code, ServingError


def serialized_examples(request_input: input_pb2.Input) -> list[bytes]:
    """Works on any generated Input class with TF Serving's field names (ours, or tensorflow-serving-api's)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in with_context.examples]
    raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
