"""deploy/k8s, deploy/kserve, deploy/compose, examples/ci: valid for what reads them, and in agreement with pyserving.

- Every kustomize overlay renders (`kubectl kustomize`), and every object it renders validates against Kubernetes'
  OpenAPI schemas with kubernetes-validate in strict mode (an unknown field fails), for each of
  KUBERNETES_VERSIONS.
- Custom resources, for which kubernetes-validate has no schema (ServiceMonitor, ServingRuntime,
  InferenceService), are validated against crd_schemas.py (the fields deploy/ uses, closed where the CRDs are),
  and the pod parts inside them against Kubernetes' Pod schema.
- The container args go through pyserving's own parser (parse_flags + server_options, reading the ConfigMap's
  model and batching configs), so a misspelt flag or a config that does not parse fails here. A real server started
  from those options then answers the probes' paths on the port the probes name, and its metrics port exports the
  series the HPA scales on.
- CI files: check-jsonschema's GitLab CI and GitHub workflow schemas. Compose: check-jsonschema's compose spec
  schema (`docker compose config` needs the compose plugin, which this machine lacks), promtool on the compose
  Prometheus config with alerts.yml, and the mounts, ports and scrape target against the files and service names.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from conftest import REPO, free_port, run_server
from crd_schemas import MODEL_SPEC_OWN_FIELDS, SCHEMAS
from pyserving.config.flags import parse_flags, server_options
from pyserving.options import ServerOptions

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KSERVE = REPO / "deploy" / "kserve"
COMPOSE = REPO / "deploy" / "compose"
CI = REPO / "examples" / "ci"
# The minor of the kubectl / kustomize these manifests are rendered with here, and the newest kubernetes-validate
# has schemas for: an API removed or changed in between fails one of them.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
CONFIG_DIR = "/etc/pyserving"  # where the Deployment mounts the ConfigMap
MODELS_DIR = "/models"         # where it mounts the PVC
HPA_METRIC = "tensorflow_serving_requests_in_flight"
# Server.stop (pyserving/server.py) waits shutdown_grace_s + 5 s for its listeners, then unloads the models.
LISTENER_SLACK_S = 5
UNLOAD_MARGIN_S = 5


# ----------------------------------------------------------------------------------------------------- helpers

def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not installed: it renders the kustomize overlays (`kubectl kustomize`, offline). "
                    "This machine kind has it (the google-cloud-cli `kubectl` package).")
    return path


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def k8s_validate(obj: dict[str, Any], where: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} is not valid for Kubernetes "
                        f"{exc.version}: {path}: {exc.message}")


def validate_any(obj: dict[str, Any], where: str) -> None:
    """Kubernetes' own schema for built-in kinds; crd_schemas.py (plus the Pod schema for pod parts) for CRDs."""
    schema = SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        k8s_validate(obj, where)
        return
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{where}: {obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(
        f"  {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    if obj["kind"] == "ServingRuntime":
        spec = obj["spec"]
        pod_spec = {k: spec[k] for k in ("containers", "volumes", "nodeSelector", "affinity", "tolerations",
                                         "imagePullSecrets", "hostIPC") if k in spec}
        k8s_validate(as_pod(obj["metadata"]["name"], pod_spec), f"{where} (spec's pod fields as a Pod)")
    if obj["kind"] == "InferenceService":
        model = obj["spec"]["predictor"].get("model", {})
        container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in MODEL_SPEC_OWN_FIELDS}}
        k8s_validate(as_pod(obj["metadata"]["name"], {"containers": [container]}),
                     f"{where} (predictor.model's container fields as a Pod)")


def as_pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container: the server"
    return containers[0]


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"port name {port!r} is not among the container's ports {container.get('ports')}"
    return numbers[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deployment_options(docs: tuple[dict[str, Any], ...], tmp: Path, models_dir: Path | None = None
                       ) -> tuple[ServerOptions, list[str]]:
    """The Deployment's args parsed by pyserving, with the ConfigMap's files written where the args point (and the
    PVC's /models moved to `models_dir` when given)."""
    configmap, args = one(docs, "ConfigMap"), container_of(one(docs, "Deployment"))["args"]
    config_dir = tmp / "etc"
    config_dir.mkdir(exist_ok=True)
    for name, text in configmap["data"].items():
        if models_dir is not None:
            text = text.replace(f'"{MODELS_DIR}/', f'"{models_dir}/')
        (config_dir / name).write_text(text)
    moved = []
    for arg in args:
        arg = arg.replace(f"={CONFIG_DIR}/", f"={config_dir}/")
        if models_dir is not None and arg == f"--model_base_path_prefix={MODELS_DIR}":
            arg = f"--model_base_path_prefix={models_dir}"
        moved.append(arg)
    values, warnings = parse_flags(moved)
    return server_options(values, warnings), warnings


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------ kustomize overlays

def test_there_are_cpu_and_gpu_overlays() -> None:
    assert {"cpu", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay: str) -> None:
    docs = render(K8S / "overlays" / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                            "PodDisruptionBudget", "Service", "ServiceMonitor"]), kinds
    for obj in docs:
        validate_any(obj, f"overlays/{overlay}")


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """The validator bites: a probe misspelt in the Deployment is an error, not a silently ignored key."""
    deployment = json.loads(json.dumps(one(render(K8S / "overlays" / "cpu"), "Deployment")))
    container = container_of(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    monitor = json.loads(json.dumps(one(render(K8S / "overlays" / "cpu"), "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(jsonschema.Draft202012Validator(SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])
                .iter_errors(monitor))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_are_pyserving_flags_and_ports_agree(overlay: str, tmp_path: Path) -> None:
    docs = render(K8S / "overlays" / overlay)
    deployment = one(docs, "Deployment")
    container = container_of(deployment)
    options, _ = deployment_options(docs, tmp_path)
    assert [m.name for m in options.models] == ["my_model"]
    assert all(m.base_path.startswith(MODELS_DIR + "/") for m in options.models)
    assert options.lifecycle.allowed_base_paths == (MODELS_DIR,)
    assert options.batching is not None and options.lifecycle.model_config_file_poll_wait_seconds > 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": options.grpc_port, "rest": options.rest_api_port, "metrics": options.metrics_port}
    # The config files are mounted where the flags read them, from the ConfigMap the overlay renders.
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(m["name"] for m in container["volumeMounts"]) <= set(volumes)
    assert volumes[mounts[CONFIG_DIR]["name"]]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert "subPath" not in mounts[CONFIG_DIR], "a subPath mount never sees ConfigMap updates"
    assert {"models.config", "batching.config"} <= set(one(docs, "ConfigMap")["data"])
    models = volumes[mounts[MODELS_DIR]["name"]]
    assert models["persistentVolumeClaim"]["claimName"] == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert mounts[MODELS_DIR].get("readOnly") is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_name_pyserving_health_endpoints(overlay: str) -> None:
    container = container_of(one(render(K8S / "overlays" / overlay), "Deployment"))
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert port_number(container, probe["port"]) == port_number(container, "rest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(overlay: str) -> None:
    spec = one(render(K8S / "overlays" / overlay), "Deployment")["spec"]["template"]["spec"]
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop_s = float(command[1])
    # the container's own --drain_delay_s and --shutdown_grace_s, else pyserving's defaults
    flags = dict(a[2:].split("=", 1) for a in spec["containers"][0].get("args", []) if a.startswith("--") and "=" in a)
    drain_s = (float(flags.get("drain_delay_s", ServerOptions().drain_delay_s))
               + float(flags.get("shutdown_grace_s", ServerOptions().shutdown_grace_s)) + LISTENER_SLACK_S)
    assert pre_stop_s >= 5, "endpoints need a few seconds to drop the pod"
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + UNLOAD_MARGIN_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_as_non_root_on_a_read_only_root(overlay: str) -> None:
    spec = one(render(K8S / "overlays" / overlay), "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in spec["volumes"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_hpa_and_monitor_point_at_the_pods(overlay: str) -> None:
    docs = render(K8S / "overlays" / overlay)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    container = container_of(deployment)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    assert selects(service["spec"]["selector"], pod_labels)
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: (p["port"], port_number(container, p["targetPort"])) for n, p in by_name.items()} == {
        "grpc": (8500, 8500), "rest": (8501, 8501), "metrics": (8502, 8502)}
    assert by_name["grpc"]["appProtocol"] == "grpc"

    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == HPA_METRIC
    if "Resource" in metrics:  # a Utilization target is relative to the request: there must be one
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert "cpu" in container["resources"]["requests"]

    monitor = one(docs, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


def test_gpu_overlay_asks_for_one_gpu_on_a_gpu_node(tmp_path: Path) -> None:
    docs = render(K8S / "overlays" / "gpu")
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert any("gpu" in key for key in spec["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    values, warnings = parse_flags([a for a in spec["containers"][0]["args"] if "gpu" in a])
    assert 0 < values["per_process_gpu_memory_fraction"] <= 1 and warnings == []
    assert {"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"} in spec["containers"][0]["env"]


def test_cpu_overlay_sizes_tensorflow_threads_to_its_cpu_limit(tmp_path: Path) -> None:
    docs = render(K8S / "overlays" / "cpu")
    container = container_of(one(docs, "Deployment"))
    assert "nvidia.com/gpu" not in json.dumps(docs)
    options, _ = deployment_options(docs, tmp_path)
    limit = float(container["resources"]["limits"]["cpu"])
    assert 0 < options.runtime.intra_op_parallelism <= limit
    assert 0 < options.runtime.inter_op_parallelism <= limit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_server_started_from_the_manifest_answers_its_probes(overlay: str, tmp_path: Path, testdata: Path) -> None:
    """The Deployment's flags and config files, with the PVC replaced by a TF Serving test model: the probe paths
    answer 200 on the probes' port, gRPC answers, and the metrics port exports the HPA's series."""
    docs = render(K8S / "overlays" / overlay)
    container = container_of(one(docs, "Deployment"))
    models = tmp_path / "models"
    models.mkdir()
    # A copy: --model_base_path_prefix resolves links, and would refuse one leading out of the prefix.
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", models / "my_model")
    options, _ = deployment_options(docs, tmp_path, models_dir=models)
    options = replace(options, rest_api_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with run_server(options) as server:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            r = requests.get(server.rest_url + container[probe]["httpGet"]["path"], timeout=10)
            assert r.status_code == 200, f"{probe}: {r.status_code} {r.text}"
        r = requests.get(f"{server.rest_url}/v1/models/my_model", timeout=10)
        assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "my_model"
        with server.channel() as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"]
        scrape = requests.get(f"http://127.0.0.1:{options.metrics_port}{endpoint}", timeout=10).text
        assert re.search(rf"^{HPA_METRIC}\{{", scrape, re.MULTILINE), "the HPA's metric is not exported"


# ---------------------------------------------------------------------------------------- prometheus-adapter

def adapter_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    configmap = one(load_yaml_docs(K8S / "prometheus-adapter" / "configmap.yaml"), "ConfigMap")
    return values["rules"]["custom"], yaml.safe_load(configmap["data"]["config.yaml"])["rules"]


def test_adapter_configmap_validates_and_says_what_the_helm_values_say() -> None:
    configmap = one(load_yaml_docs(K8S / "prometheus-adapter" / "configmap.yaml"), "ConfigMap")
    k8s_validate(configmap, "prometheus-adapter/configmap.yaml")
    helm, raw = adapter_rules()
    assert helm == raw


def test_adapter_rule_serves_the_hpa_metric_per_pod() -> None:
    (rule,), _ = adapter_rules()
    assert re.match(rf"^{HPA_METRIC}\{{", rule["seriesQuery"])
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(rule["name"]["matches"], HPA_METRIC)
    assert rule["name"]["as"] == HPA_METRIC
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    for overlay in OVERLAYS:
        hpa = one(render(K8S / "overlays" / overlay), "HorizontalPodAutoscaler")
        assert HPA_METRIC in [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]


# ---------------------------------------------------------------------------------------------------- KServe

def kserve_docs() -> tuple[dict[str, Any], dict[str, Any]]:
    runtime = one(load_yaml_docs(KSERVE / "servingruntime.yaml"), "ServingRuntime")
    isvc = one(load_yaml_docs(KSERVE / "inferenceservice.yaml"), "InferenceService")
    return runtime, isvc


def test_kserve_objects_validate() -> None:
    for obj in kserve_docs():
        validate_any(obj, "deploy/kserve")


def test_serving_runtime_follows_kserve_conventions_with_pyserving_flags() -> None:
    runtime, _ = kserve_docs()
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = [a.replace("{{.Name}}", "my-model") for a in container["args"]]
    assert "--model_name={{.Name}}" in container["args"] and "--model_base_path=/mnt/models" in container["args"]
    values, warnings = parse_flags(args)
    options = server_options(values, warnings)
    assert [(m.name, m.base_path) for m in options.models] == [("my-model", "/mnt/models")]
    assert [p["containerPort"] for p in container["ports"]] == [options.rest_api_port] == [8080]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz" and probe["port"] == options.rest_api_port
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == options.metrics_port
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {"tensorflow"}
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "grpc-v1"}


def test_inference_service_uses_the_runtime_and_a_base_path() -> None:
    runtime, isvc = kserve_docs()
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # The base path (holding numbered versions), not a version directory: pyserving would find no version.
    assert not re.search(r"/\d+/?$", model["storageUri"]), model["storageUri"]


# --------------------------------------------------------------------------------------------------- compose

@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source (resolved against the compose file's directory for bind mounts)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = str((COMPOSE / source).resolve()) if source.startswith(".") else source
    return out


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_jsonschema("vendor.compose-spec", COMPOSE / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_pyserving_service_flags_ports_and_model() -> None:
    services = compose()["services"]
    pyserving = services["pyserving"]
    values, warnings = parse_flags(pyserving["command"])
    options = server_options(values, warnings)
    published = {int(p.split(":")[1]) for p in pyserving["ports"]}
    assert {options.grpc_port, options.rest_api_port, options.metrics_port} <= published
    (model,) = options.models
    assert mounts(pyserving)[model.base_path] == str(REPO / "models" / model.name)
    assert pyserving["depends_on"]["model"]["condition"] == "service_completed_successfully"
    health = " ".join(pyserving["healthcheck"]["test"])
    assert f"127.0.0.1:{options.rest_api_port}/readyz" in health
    # The model service exports where pyserving reads, with the repository's script.
    exporter = services["model"]
    entry = exporter["entrypoint"]
    script = next(a for a in entry if a.endswith(".py"))
    host_script = next(Path(src) / Path(script).relative_to(tgt) for tgt, src in mounts(exporter).items()
                       if script.startswith(tgt + "/"))
    assert host_script == REPO / "examples" / "image_classifier" / "train_and_export.py" and host_script.exists()
    export_dir = entry[entry.index("--export_dir") + 1]
    assert mounts(exporter)["/models"] == str(REPO / "models") and export_dir == model.base_path


def test_compose_mounts_name_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("/") and not source.startswith(str(REPO / "models")):  # models/: made by `model`
                assert Path(source).exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_compose_prometheus_config_scrapes_the_pyserving_service(tmp_path: Path) -> None:
    services = compose()["services"]
    prometheus_mounts = mounts(services["prometheus"])
    config_path = Path(prometheus_mounts["/etc/prometheus/prometheus.yml"])
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"].startswith("pyserving")  # alerts.yml: up{job=~"pyserving.*"}
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    values, _ = parse_flags(services["pyserving"]["command"])
    assert host == "pyserving" and host in services and int(port) == server_options(values).metrics_port
    (rules,) = config["rule_files"]
    assert Path(prometheus_mounts[rules]) == REPO / "deploy" / "prometheus" / "alerts.yml"
    # promtool, on a copy laid out as the container sees it.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package; scripts/test.sh installs it)")
    shutil.copy(prometheus_mounts[rules], tmp_path / "alerts.yml")
    config["rule_files"] = ["alerts.yml"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_the_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = mounts(services["grafana"])
    datasources_dir = Path(grafana["/etc/grafana/provisioning/datasources"])
    (datasource,) = [d for f in sorted(datasources_dir.glob("*.yml"))
                     for d in yaml.safe_load(f.read_text())["datasources"]]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    providers_dir = Path(grafana["/etc/grafana/provisioning/dashboards"])
    (provider,) = [p for f in sorted(providers_dir.glob("*.yml")) for p in yaml.safe_load(f.read_text())["providers"]]
    dashboards = {t: s for t, s in grafana.items() if s.endswith(".json")}
    assert dashboards == {f"{provider['options']['path']}/pyserving-dashboard.json":
                          str(REPO / "deploy" / "grafana" / "pyserving-dashboard.json")}
    # The dashboard picks its Prometheus through a datasource variable, which falls back to the default data source
    # when the exported ${DS_PROMETHEUS} placeholder is not filled in (provisioning never fills it).
    dashboard = json.loads((REPO / "deploy" / "grafana" / "pyserving-dashboard.json").read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])


# -------------------------------------------------------------------------------------------------------- CI

@pytest.mark.parametrize("schema, path", [
    ("vendor.gitlab-ci", CI / ".gitlab-ci.yml"),
    ("vendor.github-workflows", CI / "github-actions.yml"),
    ("custom.github-workflows-require-timeout", CI / "github-actions.yml"),
])
def test_ci_file_matches_its_schema(schema: str, path: Path) -> None:
    result = check_jsonschema(schema, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_schema_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / ".gitlab-ci.yml"
    bad.write_text((CI / ".gitlab-ci.yml").read_text().replace("  script:", "  scripts:", 1))
    assert check_jsonschema("vendor.gitlab-ci", bad).returncode != 0


def ci_scripts() -> dict[str, list[str]]:
    """job name -> its shell lines, for both CI files."""
    gitlab = yaml.safe_load((CI / ".gitlab-ci.yml").read_text())
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    out: dict[str, list[str]] = {}
    for name, job in gitlab.items():
        if isinstance(job, dict) and "script" in job:
            out[f"gitlab:{name}"] = [*job.get("before_script", []), *job["script"]]
    for name, job in github["jobs"].items():
        out[f"github:{name}"] = [step["run"] for step in job["steps"] if "run" in step]
    return out


def test_ci_jobs_run_the_articles_three_steps_with_this_repository() -> None:
    scripts = ci_scripts()
    for ci in ("gitlab", "github"):
        build = " ".join(scripts[f"{ci}:build_model"])
        test = " ".join(scripts[f"{ci}:test_model"])
        deploy = " ".join(scripts[f"{ci}:deploy_tfserving"])
        assert "examples/image_classifier/train_and_export.py" in build
        assert "python examples/image_classifier/test_inference.py" in test
        assert "--file deploy/docker/Dockerfile" in deploy and "sh examples/ci/deploy.sh" in deploy
        # The server the test step starts: pyserving's flags, spelt right.
        serve = re.search(r"pyserving serve (.*?)>", test, re.S)
        assert serve, test
        args = [re.sub(r"\$\{?\w+\}?", "x", a) for a in shlex.split(serve.group(1).replace("\\\n", " "))]
        values, _ = parse_flags(args)
        assert server_options(values).rest_api_port == 8501
    for path in ("examples/image_classifier/train_and_export.py", "examples/image_classifier/test_inference.py",
                 "examples/ci/deploy.sh", "deploy/k8s/overlays/cpu/kustomization.yaml"):
        assert (REPO / path).exists(), path


def test_gitlab_stages_follow_the_article() -> None:
    gitlab = yaml.safe_load((CI / ".gitlab-ci.yml").read_text())
    assert gitlab["stages"] == ["build", "test", "deploy"]
    assert [gitlab[j]["stage"] for j in ("build_model", "test_model", "deploy_tfserving")] == gitlab["stages"]
    assert "build_model" in gitlab["test_model"]["needs"] and "test_model" in gitlab["deploy_tfserving"]["needs"]


def test_deploy_script_applies_the_cpu_overlay_with_the_pipelines_image(tmp_path: Path) -> None:
    """examples/ci/deploy.sh against a stand-in kubectl: `apply -k` gets a kustomization that renders the cpu
    overlay with IMAGE, the model version lands in the volume under its number (copied under a dot-name first),
    and the rollout is awaited."""
    real = kubectl()
    volume = tmp_path / "volume"
    volume.mkdir()
    log = tmp_path / "kubectl.log"
    rendered = tmp_path / "rendered.yaml"
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1 $2" in
  "apply -k") exec {real} kustomize "$3" > {rendered} ;;
  "exec "*)  # kubectl exec POD -- CMD...: run CMD with the pod's /models as {volume}
    shift 3; cmd=$(printf '%s ' "$@" | sed 's#/models#{volume}#g'); exec sh -c "${{cmd#sh -c }}" ;;
  "cp "*) src=$2; dst=$(echo "$3" | sed 's#^[^:]*:/models#{volume}#'); exec cp -r "$src" "$dst" ;;
esac
exit 0
""")
    fake.chmod(0o755)
    version_dir = tmp_path / "repo" / "models" / "my_model" / "7"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"model")
    work = tmp_path / "repo"
    # deploy.sh refers to the overlay relative to the repository root: give it one that points at ours.
    (work / "deploy").symlink_to(REPO / "deploy")
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "NAMESPACE": "",
           "IMAGE": "registry.example.com/team/pyserving:abc123", "MODEL_NAME": "my_model", "MODEL_VERSION": "7"}
    result = subprocess.run(["sh", str(CI / "deploy.sh")], cwd=work, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr + log.read_text()
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    assert container_of(one(docs, "Deployment"))["image"] == "registry.example.com/team/pyserving:abc123"
    assert (volume / "my_model" / "7" / "saved_model.pb").read_bytes() == b"model"
    assert not list((volume / "my_model").glob(".upload-*"))
    calls = log.read_text()
    assert "rollout status deployment/pyserving" in calls and "claimName" in calls
    assert not list(work.glob(".deploy.*")), "the throw-away kustomization is removed"


def test_readme_points_at_the_deploy_files() -> None:
    readme = (REPO / "README.md").read_text()
    for path in ("deploy/k8s/", "deploy/kserve/", "deploy/compose/", "examples/ci/"):
        assert path in readme, path
