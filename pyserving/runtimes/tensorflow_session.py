"""TensorFlow SavedModels, run the way TF Serving runs them: a graph-mode Session fed by tensor name. Imported by
`runtimes.tensorflow.TensorFlowRuntime.load` only, so nothing else pays for importing TensorFlow.

A Session callable made from CallableOptions costs ~20 us per call, against ~400 us for a TF2 signature
function, and it runs TF1 and TF2 SavedModels alike, with the exact signature set of the MetaGraphDef (which is
what TF Serving's metadata reports). The callable path also skips the Python client's static shape check, so a
model whose signature declares shape [1] accepts any batch, as the C++ Session in TF Serving does.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.dtypes import DType
from pyserving.errors import Code, ServingError
from pyserving.options import RuntimeOptions
from pyserving.runtimes.base import RunFn, Signature, TensorSpec
from pyserving.runtimes.tensorflow import SAVED_MODEL_FILES

log = logging.getLogger("pyserving.runtimes")

from pyserving.observability.logs import quiet_framework

# Unless logs.configure() said otherwise (--verbosity=DEBUG) or the user set it: no C++ INFO/WARNING lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

with quiet_framework("tensorflow"):
    import tensorflow as tf  # noqa: E402  (after the log-level default)

    # Probing devices now initialises CUDA, whose "failed call to cuInit" on a CPU machine (logged as an error,
    # although nothing is wrong) is then captured with the import's notices instead of appearing at first load.
    tf.config.list_physical_devices("GPU")
from google.protobuf import text_format  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402


_GRAPH_DETAIL = re.compile(r"\n\s*\[\[\{\{|\n\nErrors may have originated from")


def _client_error(exc: BaseException) -> ServingError:
    """A run's error as the client sees it: TF's first line(s), without the graph's node names and the input
    operations it traces them to (internals of the model, logged at debug level)."""
    error = _serving_error(exc)
    cut = _GRAPH_DETAIL.search(error.message)
    if cut is None:
        return error
    log.debug("Run failed: %s", error.message)
    return ServingError(error.code, error.message[: cut.start()].rstrip())


def _serving_error(exc: BaseException) -> ServingError:
    """TensorFlow errors carry canonical codes already; keep code and message."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        return ServingError(Code(exc.error_code), exc.message)
    if isinstance(exc, OSError):
        return ServingError(Code.NOT_FOUND, str(exc))
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")


def _tensor_spec(info: Any) -> TensorSpec:
    shape: tuple[int | None, ...] | None
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    ref = info.dtype > 100  # DT_FLOAT_REF etc.: TF1 variables' reference types
    return TensorSpec(dtype=DType(info.dtype - 100 if ref else info.dtype), shape=shape, tensor_name=info.name, ref=ref)


def _as_array(value: Any) -> np.ndarray:
    """Session fetches of scalar strings come back as Python bytes; every output is an ndarray (strings as object
    arrays of bytes), so the codecs see one shape of data."""
    if isinstance(value, np.ndarray):
        return value
    array = np.empty((), dtype=object) if isinstance(value, bytes) else np.asarray(value)
    if isinstance(value, bytes):
        array[()] = value
    return array


INTER_OP_DEFAULT = -1
"""Inter-op threads when neither --tensorflow_inter_op_parallelism (nor --tensorflow_session_parallelism) nor a
--tensorflow_session_config_file says: -1 runs a call's ops in the calling thread (our model worker), as TF does
for a negative value, instead of handing each call to TensorFlow's inter-op pool and blocking until a pool thread
has run it. Every model call already runs in a worker thread of its own, and intra-op work (a convolution's or a
matmul's shards) still spreads over the intra-op pool. Measured on 2 cores: the small dense model's Session call
costs 29-42 us of CPU instead of 100-107 us; the article's CNN over gRPC was no slower (c=1: 72-75 against 67-68
req/s, c=16: 100-127 against 81-112). TF Serving's own default (a pool sized to the cores) comes back with
--tensorflow_inter_op_parallelism=N, or inter_op_parallelism_threads in the session config file."""


def session_config(options: RuntimeOptions) -> config_pb2.ConfigProto:
    """--tensorflow_session_config_file with the flags on top (TF Serving's order: flags override the file)."""
    config = config_pb2.ConfigProto(allow_soft_placement=True)
    if options.session_config:
        try:
            text_format.Parse(options.session_config, config)
        except text_format.ParseError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, f"--tensorflow_session_config_file is not a tensorflow."
                               f"ConfigProto text proto: {exc}") from None
    if options.intra_op_parallelism:
        config.intra_op_parallelism_threads = options.intra_op_parallelism
    if options.inter_op_parallelism:
        config.inter_op_parallelism_threads = options.inter_op_parallelism
    elif not options.session_config:
        config.inter_op_parallelism_threads = INTER_OP_DEFAULT
    gpu = config.gpu_options
    if options.gpu_memory_fraction:
        gpu.per_process_gpu_memory_fraction = options.gpu_memory_fraction
    if options.gpu_allow_growth:
        gpu.allow_growth = True
    if options.gpu_visible_devices:
        gpu.visible_device_list = options.gpu_visible_devices
    _report_gpu_settings(gpu)
    return config


_gpu_reported: set[str] = set()


def _report_gpu_settings(gpu: config_pb2.GPUOptions) -> None:
    """Once per settings (not per model): GPU settings on a machine whose TensorFlow sees no GPU do not apply; say
    so, never fail."""
    settings = text_format.MessageToString(gpu, as_one_line=True)
    if not settings or settings in _gpu_reported:
        return
    _gpu_reported.add(settings)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log.info("GPU options for TensorFlow sessions: %s (%d GPU(s) visible)", settings, len(gpus))
    else:
        log.warning("GPU options (%s) do not apply: TensorFlow sees no GPU on this machine; models run on the CPU.",
                    settings)


class TensorFlowServable:
    """A SavedModel loaded into its own Session. Thread-safe: Session.run releases the GIL and runs concurrently."""

    inline_when_fast = True
    """A call's cost follows its inputs' shapes: small requests may run on the event loop once the model has shown
    itself fast (core/handoff.py Pace)."""

    def __init__(self, path: str, options: RuntimeOptions) -> None:
        if not any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
            raise ServingError(
                Code.NOT_FOUND,
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
                "Check that the directory exists and holds a SavedModel (saved_model.pb and variables/).",
            )
        config = session_config(options)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, list(options.saved_model_tags), path
                )
            self.signatures: Mapping[str, Signature] = {
                name: Signature(
                    name=name,
                    method_name=sd.method_name,
                    inputs={k: _tensor_spec(v) for k, v in sd.inputs.items()},
                    outputs={k: _tensor_spec(v) for k, v in sd.outputs.items()},
                    defaults={k: tf.make_ndarray(v) for k, v in sd.defaults.items()},
                )
                for name, sd in meta_graph.signature_def.items()
            }
        except BaseException as exc:
            self._session.close()
            if isinstance(exc, RuntimeError) and "could not be found in SavedModel" in str(exc):
                raise ServingError(Code.NOT_FOUND, str(exc)) from exc
            raise _serving_error(exc) from exc
        self._callables: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()
        self._path = path
        if options.enable_model_warmup and not options.defer_warmup:
            try:
                self.warm_up(self.run, options.num_request_iterations_for_warmup)
            except BaseException:
                self.unload()
                raise

    def warm_up(self, run: RunFn, iterations: int) -> int:
        from pyserving.runtimes.tensorflow_warmup import warm_up

        return warm_up(self.signatures, run, self._path, iterations)

    def _callable(self, signature: str, input_keys: tuple[str, ...], output_keys: tuple[str, ...]) -> Any:
        key = (signature, input_keys, output_keys)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    sig = self.signatures[signature]
                    opts = config_pb2.CallableOptions(
                        feed=[sig.inputs[k].tensor_name for k in input_keys],
                        fetch=[sig.outputs[k].tensor_name for k in output_keys],
                    )
                    # The public make_callable re-checks shapes in Python against the graph's static shapes;
                    # TF Serving's C++ Session does not, and some exported signatures declare [1] for a batch.
                    fn = self._session._make_callable_from_options(opts)
                    self._callables[key] = fn
        return fn

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        input_keys = tuple(inputs)
        outs = tuple(output_keys)
        try:
            fn = self._callable(signature, input_keys, outs)
            values = fn(*(inputs[k] for k in input_keys))
        except BaseException as exc:
            raise _client_error(exc) from exc
        return {key: _as_array(value) for key, value in zip(outs, values)}

    def unload(self) -> None:
        self._callables.clear()
        self._session.close()
