"""JSON schemas for the custom resources in deploy/, which kubernetes-validate has no schema for.

Each is the part of the CRD's openAPIV3Schema that deploy/ uses, written from the projects' API types
(prometheus-operator's monitoring.coreos.com/v1 ServiceMonitor; KServe's serving.kserve.io/v1alpha1 ServingRuntime
and v1beta1 InferenceService), with `additionalProperties: false` where the real schema is closed, so a misspelt
field fails. Pod-level parts (containers, resources, tolerations) are left open here and validated against
Kubernetes' own schemas by test_manifests.py instead. A field these files start using must be added here.
"""

from __future__ import annotations

from typing import Any

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"]}},
    },
}
_DURATION = {"type": "string",  # prometheus-operator's Duration
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_QUANTITY_MAP = {"type": "object", "additionalProperties": {"type": ["string", "integer", "number"]}}


def _object(kind: str, api_version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "namespace": {"type": "string"},
                    "labels": _STRING_MAP,
                    "annotations": _STRING_MAP,
                },
            },
            "spec": spec,
        },
    }


SERVICE_MONITOR = _object("ServiceMonitor", "monitoring.coreos.com/v1", {
    "type": "object",
    "required": ["selector", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": {
            "type": "object", "additionalProperties": False,
            "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
        },
        "jobLabel": {"type": "string"},
        "targetLabels": {"type": "array", "items": {"type": "string"}},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"},
                    "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION,
                    "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array"},
                    "metricRelabelings": {"type": "array"},
                },
            },
        },
    },
})

_SUPPORTED_MODEL_FORMAT = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "version": {"type": "string"},
        "autoSelect": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1},
    },
}
_PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]

SERVING_RUNTIME = _object("ServingRuntime", "serving.kserve.io/v1alpha1", {
    "type": "object",
    "required": ["containers"],
    "additionalProperties": False,
    "properties": {
        "supportedModelFormats": {"type": "array", "items": _SUPPORTED_MODEL_FORMAT},
        "multiModel": {"type": "boolean"},
        "disabled": {"type": "boolean"},
        "protocolVersions": {"type": "array", "items": {"enum": _PROTOCOLS}},
        # ServingRuntimePodSpec (inline): the pod parts, checked against Kubernetes' Pod schema by the test.
        "containers": {"type": "array", "minItems": 1,
                       "items": {"type": "object", "required": ["name"]}},
        "volumes": {"type": "array"},
        "nodeSelector": _STRING_MAP,
        "affinity": {"type": "object"},
        "tolerations": {"type": "array"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "imagePullSecrets": {"type": "array"},
        "hostIPC": {"type": "boolean"},
        "workerSpec": {"type": "object"},
        # ModelMesh only.
        "grpcEndpoint": {"type": "string"},
        "grpcDataEndpoint": {"type": "string"},
        "httpDataEndpoint": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "storageHelper": {"type": "object", "additionalProperties": False,
                          "properties": {"disabled": {"type": "boolean"}}},
        "builtInAdapter": {"type": "object"},
    },
})

# ModelSpec: ModelFormat, runtime, PredictorExtensionSpec (storageUri, ...) and an inline corev1.Container, whose
# fields the test validates against Kubernetes' Container schema.
_MODEL_SPEC_OWN = {
    "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1}, "version": {"type": "string"}}},
    "runtime": {"type": "string"},
    "storageUri": {"type": "string", "pattern": r"^(s3|gs|pvc|hdfs|webhdfs|https?|hf|oci)://"},
    "runtimeVersion": {"type": "string"},
    "protocolVersion": {"enum": _PROTOCOLS},
}
MODEL_SPEC_OWN_FIELDS = frozenset(_MODEL_SPEC_OWN)

INFERENCE_SERVICE = _object("InferenceService", "serving.kserve.io/v1beta1", {
    "type": "object",
    "required": ["predictor"],
    "additionalProperties": False,
    "properties": {
        "predictor": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "model": {"type": "object", "required": ["modelFormat"], "properties": _MODEL_SPEC_OWN},
                # ComponentExtensionSpec (inline)
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "scaleTarget": {"type": "integer", "minimum": 1},
                "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                "containerConcurrency": {"type": "integer", "minimum": 0},
                "timeout": {"type": "integer", "minimum": 0},
                "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
                # PodSpec (inline): the fields a predictor commonly sets.
                "serviceAccountName": {"type": "string"},
                "nodeSelector": _STRING_MAP,
                "tolerations": {"type": "array"},
                "imagePullSecrets": {"type": "array"},
            },
        },
        "transformer": {"type": "object"},
        "explainer": {"type": "object"},
    },
})

SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}
