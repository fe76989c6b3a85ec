"""Our TensorFlow-free protos (pyserving.codecs.tfserving.protos) against TF Serving's own.

Clients and TF Serving tooling only ever see bytes, so the contract is byte-for-byte
equality in both directions, plus identical descriptors (which covers fields no
example below happens to set).
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from google.protobuf import any_pb2, descriptor, descriptor_pool, json_format, message_factory, text_format
from google.protobuf.message import Message

import pyserving.codecs.tfserving.protos as protos_pkg
from pyserving.codecs.tfserving.protos import services

OUR_PACKAGE = "pyserving.tfs"
# Where each of our top-level names came from; a name must exist in exactly one.
THEIR_PACKAGES = ("tensorflow.serving", "tensorflow", "tensorflow.error")
# Deliberately field-less stand-ins (see config.proto): compared by name only.
OPAQUE = {"RunOptions", "RunMetadata"}


def our_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(protos_pkg.__path__) if m.name.endswith("_pb2")]
    return [importlib.import_module(f"{protos_pkg.__name__}.{n}") for n in sorted(names)]


OUR_MODULES = our_modules()
OUR_TOP_LEVEL: dict[str, descriptor.Descriptor | descriptor.EnumDescriptor] = {
    name: d
    for mod in OUR_MODULES
    for table in (mod.DESCRIPTOR.message_types_by_name, mod.DESCRIPTOR.enum_types_by_name)
    for name, d in table.items()
}


@pytest.fixture(scope="module")
def their_pool() -> descriptor_pool.DescriptorPool:
    # These few modules load (transitively) every file our copies were taken from.
    from tensorflow_serving.apis import (  # noqa: F401
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        prediction_log_pb2,
    )
    from tensorflow.core.example import example_pb2  # noqa: F401

    return descriptor_pool.Default()


def their_full_name(pool: descriptor_pool.DescriptorPool, short: str) -> str:
    found = []
    for pkg in THEIR_PACKAGES:
        for find in (pool.FindMessageTypeByName, pool.FindEnumTypeByName):
            try:
                found.append(find(f"{pkg}.{short}").full_name)
            except KeyError:
                pass
    assert len(found) == 1, f"{short}: expected exactly one TensorFlow counterpart, found {found}"
    return found[0]


def ours_to_theirs(pool: descriptor_pool.DescriptorPool, our_full_name: str) -> str:
    """Map an our full name (possibly nested) to TensorFlow's, or leave non-pyserving names alone."""
    if not our_full_name.startswith(OUR_PACKAGE + "."):
        return our_full_name  # google.protobuf.*, shared by both sides
    top, _, nested = our_full_name[len(OUR_PACKAGE) + 1 :].partition(".")
    theirs = their_full_name(pool, top)
    return f"{theirs}.{nested}" if nested else theirs


# --- descriptor equality ---------------------------------------------------------------


def field_signature(pool: descriptor_pool.DescriptorPool, f: descriptor.FieldDescriptor) -> tuple:
    ref = f.message_type or f.enum_type
    return (
        f.name,
        f.number,
        f.type,
        f.is_repeated,
        f.has_presence,
        f.is_packed,
        f.json_name,
        f.containing_oneof.name if f.containing_oneof else None,
        ours_to_theirs(pool, ref.full_name) if ref is not None else None,
    )


def assert_same_enum(ours: descriptor.EnumDescriptor, theirs: descriptor.EnumDescriptor) -> None:
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in theirs.values], ours.full_name


def assert_same_message(
    pool: descriptor_pool.DescriptorPool, ours: descriptor.Descriptor, theirs: descriptor.Descriptor, seen: set[str]
) -> None:
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    assert ours.name == theirs.name
    if ours.name in OPAQUE and ours.containing_type is None:
        assert not ours.fields, f"{ours.full_name} is meant to be opaque"
        return
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
    assert sorted(field_signature(pool, f) for f in ours.fields) == sorted(
        field_signature(pool, f) for f in theirs.fields
    ), ours.full_name
    assert sorted(o.name for o in ours.oneofs) == sorted(o.name for o in theirs.oneofs), ours.full_name
    assert sorted(ours.nested_types_by_name) == sorted(theirs.nested_types_by_name), ours.full_name
    assert sorted(ours.enum_types_by_name) == sorted(theirs.enum_types_by_name), ours.full_name
    for name, nested in ours.nested_types_by_name.items():
        assert_same_message(pool, nested, theirs.nested_types_by_name[name], seen)
    for name, enum in ours.enum_types_by_name.items():
        assert_same_enum(enum, theirs.enum_types_by_name[name])
    # Walk into referenced types too, so a slip anywhere below a request is caught
    # even if that type were somehow missing from OUR_TOP_LEVEL.
    for f in ours.fields:
        ref = f.message_type or f.enum_type
        if ref is None or not ref.full_name.startswith(OUR_PACKAGE + "."):
            continue
        their_ref_name = ours_to_theirs(pool, ref.full_name)
        if f.message_type is not None:
            assert_same_message(pool, f.message_type, pool.FindMessageTypeByName(their_ref_name), seen)
        else:
            assert_same_enum(f.enum_type, pool.FindEnumTypeByName(their_ref_name))


@pytest.mark.parametrize("name", sorted(OUR_TOP_LEVEL))
def test_descriptor_matches_tensorflow(their_pool: descriptor_pool.DescriptorPool, name: str) -> None:
    ours = OUR_TOP_LEVEL[name]
    theirs_name = their_full_name(their_pool, name)
    if isinstance(ours, descriptor.EnumDescriptor):
        assert_same_enum(ours, their_pool.FindEnumTypeByName(theirs_name))
    else:
        assert_same_message(their_pool, ours, their_pool.FindMessageTypeByName(theirs_name), set())


def test_every_tensorflow_message_we_need_is_covered(their_pool: descriptor_pool.DescriptorPool) -> None:
    """Each top-level message in TF Serving's API files we copied exists here too."""
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        input_pb2,
        model_management_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )
    from tensorflow_serving.config import model_server_config_pb2

    for mod in (
        classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2, input_pb2,
        model_management_pb2, model_pb2, predict_pb2, prediction_log_pb2, regression_pb2, model_server_config_pb2,
    ):  # fmt: skip
        missing = set(mod.DESCRIPTOR.message_types_by_name) - set(OUR_TOP_LEVEL)
        assert not missing, f"{mod.DESCRIPTOR.name}: {missing}"


def test_our_files_live_apart_from_tensorflow(their_pool: descriptor_pool.DescriptorPool) -> None:
    # Both sides share the default pool in the model server; reaching this point with
    # TensorFlow's files loaded already shows no file or symbol collided.
    for mod in OUR_MODULES:
        assert mod.DESCRIPTOR.name.startswith("pyserving/codecs/tfserving/protos/")
        assert mod.DESCRIPTOR.package == OUR_PACKAGE
        assert their_pool.FindFileByName(mod.DESCRIPTOR.name).package == OUR_PACKAGE


# --- byte-for-byte round trips -----------------------------------------------------------


class Protos:
    """Message classes by short name, from one side (ours or TensorFlow's), so one builder serves both."""

    def __init__(self, resolve: Callable[[str], type[Message]], pack_signature_def_map: Callable[[Message], Any]):
        self._resolve = resolve
        self.pack_signature_def_map = pack_signature_def_map

    def __getattr__(self, name: str) -> type[Message]:
        return self._resolve(name)


def our_class(name: str) -> type[Message]:
    d = OUR_TOP_LEVEL[name]
    return getattr(sys.modules[d.file.name.replace("/", ".").removesuffix(".proto") + "_pb2"], name)


OURS = Protos(our_class, services.pack_signature_def_map)


@pytest.fixture(scope="module")
def theirs(their_pool: descriptor_pool.DescriptorPool) -> Protos:
    def their_class(name: str) -> type[Message]:
        return message_factory.GetMessageClass(their_pool.FindMessageTypeByName(their_full_name(their_pool, name)))

    def pack(sdm: Message) -> any_pb2.Any:
        packed = any_pb2.Any()
        packed.Pack(sdm, deterministic=True)
        return packed

    return Protos(their_class, pack)


def spec(m: Protos, **kw: Any) -> Message:
    return m.ModelSpec(name="half_plus_two", signature_name="serving_default", **kw)


def float_tensor(m: Protos, values: list[float], shape: list[int]) -> Message:
    return m.TensorProto(
        dtype="DT_FLOAT",
        tensor_shape=m.TensorShapeProto(dim=[m.TensorShapeProto.Dim(size=s) for s in shape]),
        tensor_content=np.asarray(values, dtype="<f4").tobytes(),
    )


def typed_tensors(m: Protos) -> dict[str, Message]:
    def shaped(n: int, **kw: Any) -> Message:
        return m.TensorProto(tensor_shape=m.TensorShapeProto(dim=[m.TensorShapeProto.Dim(size=n)]), **kw)

    return {
        "f": shaped(3, dtype="DT_FLOAT", float_val=[1.5, -0.0, 3e38]),
        "i": shaped(3, dtype="DT_INT32", int_val=[-1, 0, 2**31 - 1]),
        "l": shaped(2, dtype="DT_INT64", int64_val=[-(2**63), 2**63 - 1]),
        "s": shaped(2, dtype="DT_STRING", string_val=[b"hello", b"\xff\x00raw"]),
        "b": shaped(2, dtype="DT_BOOL", bool_val=[True, False]),
        "d": shaped(2, dtype="DT_DOUBLE", double_val=[1e-300, 2.5]),
        "h": shaped(2, dtype="DT_HALF", half_val=[0x3C00, 0xC000]),  # 1.0, -2.0 as raw float16 bits
        "c": shaped(1, dtype="DT_COMPLEX128", dcomplex_val=[1.0, -2.0]),
        "scalar": m.TensorProto(dtype="DT_FLOAT", tensor_shape=m.TensorShapeProto(), float_val=[7.0]),
    }


def example(m: Protos, i: int) -> Message:
    return m.Example(
        features=m.Features(
            feature={
                "x": m.Feature(float_list=m.FloatList(value=[float(i), 0.5])),
                "id": m.Feature(int64_list=m.Int64List(value=[i, -(2**40)])),
                "tag": m.Feature(bytes_list=m.BytesList(value=[b"a", f"t{i}".encode()])),
            }
        )
    )


def example_list_input(m: Protos) -> Message:
    return m.Input(example_list=m.ExampleList(examples=[example(m, 1), example(m, 2)]))


def example_list_with_context_input(m: Protos) -> Message:
    return m.Input(
        example_list_with_context=m.ExampleListWithContext(examples=[example(m, 3)], context=example(m, 0))
    )


def classification_result(m: Protos) -> Message:
    return m.ClassificationResult(
        classifications=[
            m.Classifications(classes=[m.Class(label="cat", score=0.75), m.Class(label="dog", score=0.25)]),
            m.Classifications(classes=[m.Class(label="", score=1.0)]),
        ]
    )


def regression_result(m: Protos) -> Message:
    return m.RegressionResult(regressions=[m.Regression(value=2.5), m.Regression(value=-1.0)])


def signature_def_map(m: Protos) -> Message:
    dim = m.TensorShapeProto.Dim
    return m.SignatureDefMap(
        signature_def={
            "serving_default": m.SignatureDef(
                inputs={
                    "x": m.TensorInfo(
                        name="x:0", dtype="DT_FLOAT", tensor_shape=m.TensorShapeProto(dim=[dim(size=-1), dim(size=3)])
                    ),
                    "anything": m.TensorInfo(
                        name="a:0", dtype="DT_STRING", tensor_shape=m.TensorShapeProto(unknown_rank=True)
                    ),
                },
                outputs={
                    "y": m.TensorInfo(
                        name="y:0", dtype="DT_FLOAT", tensor_shape=m.TensorShapeProto(dim=[dim(size=-1)])
                    ),
                    "sparse": m.TensorInfo(
                        coo_sparse=m.TensorInfo.CooSparse(
                            values_tensor_name="v:0", indices_tensor_name="i:0", dense_shape_tensor_name="s:0"
                        ),
                        dtype="DT_INT64",
                    ),
                },
                method_name="tensorflow/serving/predict",
                defaults={"temperature": m.TensorProto(dtype="DT_FLOAT", float_val=[1.0])},
            ),
            "classify": m.SignatureDef(
                inputs={"inputs": m.TensorInfo(name="tf_example:0", dtype="DT_STRING")},
                outputs={
                    "classes": m.TensorInfo(name="c:0", dtype="DT_STRING"),
                    "scores": m.TensorInfo(name="s:0", dtype="DT_FLOAT"),
                },
                method_name="tensorflow/serving/classify",
            ),
        }
    )


def model_server_config(m: Protos) -> Message:
    policy = m.FileSystemStoragePathSourceConfig.ServableVersionPolicy
    return m.ModelServerConfig(
        model_config_list=m.ModelConfigList(
            config=[
                m.ModelConfig(
                    name="half_plus_two",
                    base_path="/models/half_plus_two",
                    model_platform="tensorflow",
                    model_version_policy=policy(specific=policy.Specific(versions=[1, 2])),
                    version_labels={"stable": 1, "canary": 2},
                    logging_config=m.LoggingConfig(
                        log_collector_config=m.LogCollectorConfig(type="file", filename_prefix="/tmp/log"),
                        sampling_config=m.SamplingConfig(sampling_rate=0.25),
                    ),
                ),
                m.ModelConfig(
                    name="other",
                    base_path="gs://bucket/other",
                    model_platform="tensorflow",
                    model_version_policy=policy(latest=policy.Latest(num_versions=2)),
                ),
                m.ModelConfig(
                    name="all",
                    base_path="/models/all",
                    model_version_policy=policy(all=policy.All()),
                ),
            ]
        )
    )


def predict_request(m: Protos) -> Message:
    return m.PredictRequest(
        model_spec=spec(m, version={"value": 123}),
        inputs={"x": float_tensor(m, [1.0, 2.0, 5.0, -1.5], [2, 2]), "y": float_tensor(m, [0.0], [1])},
        output_filter=["y", "z"],
    )


def predict_response(m: Protos) -> Message:
    return m.PredictResponse(
        model_spec=spec(m, version={"value": 1}), outputs={"y": float_tensor(m, [2.5, 3.0], [2]), **typed_tensors(m)}
    )


CASES: dict[str, Callable[[Protos], Message]] = {
    "predict_request_tensor_content": predict_request,
    "predict_request_typed_vals": lambda m: m.PredictRequest(
        model_spec=spec(m, version_label="stable"), inputs=typed_tensors(m)
    ),
    "predict_request_version_zero_and_empty_optional": lambda m: m.PredictRequest(
        # version 0 and client_id b"" are present-but-default: both must still be on the wire.
        model_spec=m.ModelSpec(name="m", version={"value": 0}), client_id=b""
    ),
    "predict_response": predict_response,
    "classification_request_example_list": lambda m: m.ClassificationRequest(
        model_spec=spec(m), input=example_list_input(m)
    ),
    "classification_request_with_context": lambda m: m.ClassificationRequest(
        model_spec=spec(m, version={"value": 7}), input=example_list_with_context_input(m)
    ),
    "classification_response": lambda m: m.ClassificationResponse(
        model_spec=spec(m, version={"value": 1}), result=classification_result(m)
    ),
    "regression_request": lambda m: m.RegressionRequest(model_spec=spec(m), input=example_list_input(m)),
    "regression_response": lambda m: m.RegressionResponse(
        model_spec=spec(m, version={"value": 1}), result=regression_result(m)
    ),
    "multi_inference_request": lambda m: m.MultiInferenceRequest(
        tasks=[
            m.InferenceTask(model_spec=spec(m), method_name="tensorflow/serving/classify"),
            m.InferenceTask(model_spec=spec(m, version_label="canary"), method_name="tensorflow/serving/regress"),
        ],
        input=example_list_with_context_input(m),
    ),
    "multi_inference_response": lambda m: m.MultiInferenceResponse(
        results=[
            m.InferenceResult(model_spec=spec(m), classification_result=classification_result(m)),
            m.InferenceResult(model_spec=spec(m), regression_result=regression_result(m)),
        ]
    ),
    "get_model_metadata_request": lambda m: m.GetModelMetadataRequest(
        model_spec=spec(m), metadata_field=["signature_def"]
    ),
    "get_model_metadata_response": lambda m: m.GetModelMetadataResponse(
        model_spec=spec(m, version={"value": 2}),
        metadata={"signature_def": m.pack_signature_def_map(signature_def_map(m))},
    ),
    "get_model_status_request": lambda m: m.GetModelStatusRequest(model_spec=spec(m, version={"value": 3})),
    "get_model_status_response": lambda m: m.GetModelStatusResponse(
        model_version_status=[
            m.ModelVersionStatus(version=2, state="AVAILABLE", status=m.StatusProto()),
            m.ModelVersionStatus(
                version=3,
                state="END",
                status=m.StatusProto(error_code="NOT_FOUND", error_message="Could not find base path"),
            ),
            m.ModelVersionStatus(version=4, state="LOADING"),
        ]
    ),
    "reload_config_request": lambda m: m.ReloadConfigRequest(
        config=model_server_config(m), metric_names=[":tensorflow:serving:request_count"]
    ),
    "reload_config_response_ok": lambda m: m.ReloadConfigResponse(status=m.StatusProto()),
    "reload_config_response_error": lambda m: m.ReloadConfigResponse(
        status=m.StatusProto(error_code="INVALID_ARGUMENT", error_message="bad config"),
        metric=[m.Metric(name="x", int64_value_increase=0)],
    ),
    "prediction_log_predict": lambda m: m.PredictionLog(
        log_metadata=m.LogMetadata(
            model_spec=spec(m, version={"value": 1}),
            sampling_config=m.SamplingConfig(sampling_rate=1.0),
            saved_model_tags=["serve"],
            timestamp_secs=1_700_000_000,
        ),
        predict_log=m.PredictLog(request=predict_request(m), response=predict_response(m)),
    ),
    "prediction_log_classify": lambda m: m.PredictionLog(
        log_metadata=m.LogMetadata(model_spec=spec(m)),
        classify_log=m.ClassifyLog(
            request=m.ClassificationRequest(model_spec=spec(m), input=example_list_input(m)),
            response=m.ClassificationResponse(model_spec=spec(m), result=classification_result(m)),
        ),
    ),
    "example": lambda m: example(m, 42),
    "sequence_example": lambda m: m.SequenceExample(
        context=example(m, 1).features,
        feature_lists=m.FeatureLists(
            feature_list={"f": m.FeatureList(feature=[m.Feature(int64_list=m.Int64List(value=[1, 2]))])}
        ),
    ),
}


def wire(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensorflow_bytes_round_trip_through_ours(theirs: Protos, case: str) -> None:
    their_msg = CASES[case](theirs)
    their_bytes = wire(their_msg)
    assert their_bytes, "an empty message would prove nothing"
    our_msg = type(CASES[case](OURS)).FromString(their_bytes)
    assert wire(our_msg) == their_bytes


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_messages_parse_identically_in_tensorflow(theirs: Protos, case: str) -> None:
    our_msg = CASES[case](OURS)
    their_msg = CASES[case](theirs)
    parsed = type(their_msg).FromString(wire(our_msg))
    assert parsed == their_msg
    assert wire(parsed) == wire(our_msg) == wire(their_msg)


def test_session_run_log_survives_opaque_run_options(theirs: Protos) -> None:
    from tensorflow.core.protobuf import config_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog(
        session_run_log=prediction_log_pb2.SessionRunLog(
            request={
                "model_spec": {"name": "m"},
                "feed": [{"name": "x:0", "tensor": {"dtype": "DT_FLOAT", "float_val": [1.0]}}],
                "fetch": ["y:0"],
                "options": config_pb2.RunOptions(
                    trace_level=config_pb2.RunOptions.FULL_TRACE,
                    timeout_in_ms=1500,
                    debug_options={"debug_tensor_watch_opts": [{"node_name": "n", "debug_ops": ["DebugIdentity"]}]},
                ),
            },
            response={
                "tensor": [{"name": "y:0", "tensor": {"dtype": "DT_FLOAT", "float_val": [2.0]}}],
                "metadata": config_pb2.RunMetadata(
                    step_stats={"dev_stats": [{"device": "/cpu:0", "node_stats": [{"node_name": "n"}]}]},
                    partition_graphs=[{"node": [{"name": "n", "op": "Identity", "attr": {"T": {"type": "DT_FLOAT"}}}]}],
                ),
            },
        )
    )
    ours = OURS.PredictionLog.FromString(wire(log))
    assert wire(ours) == wire(log)
    assert prediction_log_pb2.PredictionLog.FromString(wire(ours)) == log


def test_signature_def_map_any_uses_tf_serving_type_url(theirs: Protos) -> None:
    packed = services.pack_signature_def_map(signature_def_map(OURS))
    assert packed.type_url == services.SIGNATURE_DEF_MAP_TYPE_URL
    # A TF Serving client unpacks by its own type name; that must work on what we send.
    their_sdm = theirs.SignatureDefMap()
    assert packed.Unpack(their_sdm)
    assert their_sdm == signature_def_map(theirs)
    # And we must read what TF Serving sends.
    their_packed = theirs.pack_signature_def_map(signature_def_map(theirs))
    assert services.unpack_signature_def_map(their_packed) == signature_def_map(OURS)
    with pytest.raises(ValueError):
        services.unpack_signature_def_map(any_pb2.Any(type_url="type.googleapis.com/pyserving.tfs.SignatureDefMap"))


def test_model_server_config_text_format_matches(theirs: Protos) -> None:
    ours, their_msg = model_server_config(OURS), model_server_config(theirs)
    assert text_format.MessageToString(ours) == text_format.MessageToString(their_msg)
    # The server also reads config files written for TF Serving.
    assert text_format.Parse(text_format.MessageToString(their_msg), OURS.ModelServerConfig()) == ours


@pytest.mark.parametrize("case", ["get_model_status_response", "predict_request_typed_vals", "classification_response"])
def test_json_matches(theirs: Protos, case: str) -> None:
    # json_name overrides (StatusProto, GetModelStatusResponse) only show up here.
    for kw in ({}, {"preserving_proto_field_name": True}):
        assert json_format.MessageToJson(CASES[case](OURS), **kw) == json_format.MessageToJson(
            CASES[case](theirs), **kw
        )


def test_services_cover_tf_serving_methods() -> None:
    assert services.PREDICTION_SERVICE == "tensorflow.serving.PredictionService"
    assert services.MODEL_SERVICE == "tensorflow.serving.ModelService"
    # Method names and message types as in TF Serving's prediction_service.proto / model_service.proto.
    expected = {
        "Classify": ("ClassificationRequest", "ClassificationResponse"),
        "Regress": ("RegressionRequest", "RegressionResponse"),
        "Predict": ("PredictRequest", "PredictResponse"),
        "MultiInference": ("MultiInferenceRequest", "MultiInferenceResponse"),
        "GetModelMetadata": ("GetModelMetadataRequest", "GetModelMetadataResponse"),
        "GetModelStatus": ("GetModelStatusRequest", "GetModelStatusResponse"),
        "HandleReloadConfigRequest": ("ReloadConfigRequest", "ReloadConfigResponse"),
    }
    got = {
        method: (req.DESCRIPTOR.name, resp.DESCRIPTOR.name)
        for methods in services.SERVICES.values()
        for method, (req, resp) in methods.items()
    }
    assert got == expected


def test_service_names_match_tf_serving_descriptors(their_pool: descriptor_pool.DescriptorPool) -> None:
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2  # noqa: F401

    for service_name, methods in services.SERVICES.items():
        service = their_pool.FindServiceByName(service_name)
        assert set(methods) == set(service.methods_by_name)
        for name, (req, resp) in methods.items():
            method = service.methods_by_name[name]
            assert (method.input_type.name, method.output_type.name) == (req.DESCRIPTOR.name, resp.DESCRIPTOR.name)


def test_importing_our_protos_does_not_import_tensorflow() -> None:
    modules = [m.__name__ for m in OUR_MODULES] + [services.__name__]
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving"))
        assert not leaked, leaked
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
