"""deploy/grafana: the dashboard's queries (and the alert rules') only use metric names a real server exports.

Every PromQL expression in the dashboard (panel targets, annotations, variable queries) is reduced to the metric
names it selects; a real server is then driven through every feature those names describe (REST and gRPC
predictions, a bad request, batching, a canary split whose failing candidate is rolled back, a failed load), its
endpoint is scraped, and each name must be among the scraped sample names (`_total`, `_bucket`, ... included).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import TESTDATA, export_picky_model, free_port, run_server
from pyserving.options import (BatchingOptions, LifecycleOptions, ModelConfig, RollbackGuard, ServerOptions,
                               TrafficSplit, VersionPolicy)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "pyserving-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
MONITORING_PATH = "/monitoring/prometheus/metrics"

# Exported only where the server sees a GPU (NVML): may be absent from a CPU-only scrape, and nothing else may.
ONLY_WITH_A_GPU = {"tensorflow_serving_gpu_utilization"}
# Series Prometheus makes itself for every target; no server exports them.
PROMETHEUS_OWN = {"up"}

# --------------------------------------------------------------------------------------------- PromQL -> names

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])                       # Grafana: $model ${model} [[model]]
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)  # 0.99 1e3 5m 1h30m
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>\S)
  | \s+
""", re.VERBOSE)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile", "limitk", "limit_ratio"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, aggregations, keywords,
    label names (in matchers or in by/without/on/ignoring/group_* lists), strings, numbers, durations or Grafana
    variables."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct" and text in "{[":  # label matchers, ranges, subqueries: no metric names inside
            close = "}" if text == "{" else "]"
            while tokens[i][1] != close:
                i += 1
        elif kind == "ident":
            word = text.lower()
            if word in _LABEL_LISTS:
                if following == "(":
                    while tokens[i][1] != ")":
                        i += 1
            elif word in _AGGREGATIONS or word in _KEYWORDS or following == "(":
                pass  # an aggregation, a keyword, or a function call
            else:
                names.add(text)
        i += 1
    return names


def variable_query_names(query: str) -> set[str]:
    """Grafana's Prometheus variable queries: label_values(EXPR, label), label_values(label), query_result(EXPR)."""
    query = query.strip()
    if m := re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", query, re.S):
        return metric_names(m.group(1))
    if re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)", query):
        return set()
    if m := re.fullmatch(r"query_result\((.*)\)", query, re.S):
        return metric_names(m.group(1))
    raise AssertionError(f"unsupported variable query: {query!r}")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every `expr` anywhere in the dashboard: panel targets, rows' panels, annotations."""
    return _exprs(dashboard())


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for key, value in node.items() if key != "expr" for e in _exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in _exprs(value)]
    return []


def variable_queries() -> list[str]:
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def dashboard_metric_names() -> set[str]:
    names = set().union(*map(metric_names, dashboard_exprs()), *map(variable_query_names, variable_queries()))
    assert names, "no metric names found in the dashboard"
    return names


def alert_exprs() -> list[str]:
    """The `expr` of every rule in alerts.yml (block or inline scalars; no YAML library needed)."""
    lines = ALERTS.read_text().splitlines()
    exprs = []
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            for following in lines[i + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following)
            exprs.append("\n".join(block))
        else:
            exprs.append(value.strip("'\""))
    rules = sum(1 for line in lines if re.match(r"\s*- (alert|record):", line))
    assert len(exprs) == rules, f"found {len(exprs)} exprs for {rules} rules in {ALERTS}"
    return exprs


def alert_metric_names() -> set[str]:
    return set().union(*map(metric_names, alert_exprs()))


# --------------------------------------------------------------------------------------------- static checks

def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{model=~"$model", le!="+Inf"}[$__rate_interval])))'
        " / 1000 > 100"
    ) == {"a_bucket"}
    assert metric_names('sum without (code) (rate(b_total[5m] offset 1h)) and on (job) up == 0') == {"b_total", "up"}
    assert metric_names("c unless c offset 10m or vector(0) * 1e3") == {"c"}
    assert metric_names('x * on (instance) group_left (gpu) :tensorflow:serving:request_count{status="OK"}') == {
        "x", ":tensorflow:serving:request_count"}
    assert metric_names('max_over_time(d[1h:5m]) > bool 0.5 and count by (m) (e) > 0 or topk(3, f)') == {"d", "e", "f"}
    assert metric_names('sum(g{a="by (x)", b=\'sum(y)\'}) by (model)') == {"g"}
    assert variable_query_names('label_values(h{model=~"$model"}, version)') == {"h"}
    assert variable_query_names("label_values(model)") == set()


def test_dashboard_is_importable_and_has_the_articles_panels() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41 and d["uid"] and d["title"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        assert variables[name]["type"] == "query" and "label_values(" in variables[name]["definition"]
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = d["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    by_title = {p["title"]: p for p in panels}
    for title in ("QPS trend", "Latency P50 / P90 / P99", "GPU utilisation heatmap", "Error rate 4xx / 5xx",
                  "Batching queue length", "QPS by version", "Error rate by version", "P99 latency by version",
                  "Canary weights", "Model load time", "Model versions and states", "Requests in flight",
                  "Process memory"):
        assert title in by_title, title
    assert by_title["GPU utilisation heatmap"]["type"] == "heatmap"
    latency = [t["expr"] for t in by_title["Latency P50 / P90 / P99"]["targets"]]
    assert [e.split(",")[0] for e in latency] == ["histogram_quantile(0.5", "histogram_quantile(0.9",
                                                   "histogram_quantile(0.99"]
    assert all("_bucket" in e and "/ 1000" in e for e in latency)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, parses (as a recording rule checked by promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: .ci/run must install Debian's prometheus package "
                    "(`apt-get update && apt-get install -y prometheus`).")
    fill = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "${datasource}": "x"}
    exprs = dashboard_exprs() + [re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", q, re.S).group(1)  # type: ignore
                                 for q in variable_queries()]
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for n, expr in enumerate(exprs):
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $model, $version: inside regex matchers
        rules += [f"      - record: dashboard:query_{n}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard_rules.yml").write_text("\n".join(rules) + "\n")
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard_rules.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------- live scrape

def wait_for(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample names scraped from both endpoint spellings of a server that did everything the dashboard shows."""
    if not TESTDATA.is_dir():
        pytest.fail(f"TF Serving test data not found at {TESTDATA}; set PYSERVING_SHARED to the shared/ directory")
    half = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
    tmp = tmp_path_factory.mktemp("dashboard")
    canary, other = tmp / "canary", tmp / "other"
    shutil.copytree(half, canary / "2")
    export_picky_model(canary / "3")
    shutil.copytree(half, other / "1")
    split = TrafficSplit(arms=((2, 50), (3, 50)),
                         rollback=RollbackGuard(max_error_rate_increase=0.1, window_s=60, min_requests=20))
    options = ServerOptions(
        models=(ModelConfig(name="canary", base_path=str(canary),
                            version_policy=VersionPolicy("specific", versions=(2, 3)), traffic_split=split),
                ModelConfig(name="other", base_path=str(other))),
        monitoring_path=MONITORING_PATH, metrics_port=free_port(),
        batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=1000),
        lifecycle=LifecycleOptions(file_system_poll_wait_seconds=0.1, max_num_load_retries=0),
    )
    with run_server(options) as server:
        rest = server.rest_url
        for _ in range(5):
            r = requests.post(f"{rest}/v1/models/other:predict", json={"instances": [1.0, 2.0]}, timeout=10)
            assert r.status_code == 200, r.text
        bad = requests.post(f"{rest}/v1/models/other:predict", json={"instances": ["not a number"]}, timeout=10)
        assert bad.status_code == 400, bad.text
        assert requests.post(f"{rest}/v1/models/missing:predict", json={"instances": [1.0]},
                             timeout=10).status_code == 404

        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
        rng = np.random.default_rng(0)
        codes = []
        for _ in range(300):  # half of the canary's answers fail: its guard rolls it back
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "canary"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[float(rng.random())]], dtype=tf.float32))
            try:
                stub.Predict(request, 10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert grpc.StatusCode.INVALID_ARGUMENT in codes, "the canary never failed: no rollback to see"

        # a broken new version of "other": a failed load (version 1 keeps serving)
        shutil.copytree(TESTDATA / "bad_half_plus_two" / "00000123", other / "2")

        def status_of_2() -> str:
            body = requests.get(f"{rest}/v1/models/other", timeout=10).json()
            return next((s["state"] for s in body["model_version_status"] if s["version"] == "2"), "")

        wait_for(lambda: status_of_2() == "END", "the broken version's load to fail")

        metrics_url = f"http://127.0.0.1:{options.metrics_port}/metrics"
        wait_for(lambda: "tensorflow_serving_canary_rollbacks_total{" in requests.get(metrics_url, timeout=10).text,
                 "the canary's rollback to be exported")
        scrapes = {}
        for name, url in (("--monitoring_config_file", rest + MONITORING_PATH), ("--metrics_port", metrics_url)):
            response = requests.get(url, timeout=10)
            assert response.status_code == 200, (url, response.status_code)
            scrapes[name] = sample_names(response.text)
        return scrapes


@pytest.mark.parametrize("endpoint", ["--monitoring_config_file", "--metrics_port"])
def test_dashboard_uses_only_exported_metric_names(scraped: dict[str, set[str]], endpoint: str) -> None:
    used = dashboard_metric_names()
    assert ONLY_WITH_A_GPU <= used, "the GPU heatmap must use tensorflow_serving_gpu_utilization"
    missing = used - scraped[endpoint] - ONLY_WITH_A_GPU
    assert not missing, (f"the dashboard queries metric names the server does not export ({endpoint}): "
                         f"{sorted(missing)}; exported: {sorted(scraped[endpoint])}")


@pytest.mark.parametrize("endpoint", ["--monitoring_config_file", "--metrics_port"])
def test_alert_rules_use_only_exported_metric_names(scraped: dict[str, set[str]], endpoint: str) -> None:
    used = alert_metric_names()
    assert {"tensorflow_serving_request_latency_micros_bucket", "tensorflow_serving_batching_queue_length",
            "tensorflow_serving_gpu_utilization", "tensorflow_serving_model_load_time_seconds"} <= used
    missing = used - scraped[endpoint] - ONLY_WITH_A_GPU - PROMETHEUS_OWN
    assert not missing, (f"the alert rules use metric names the server does not export ({endpoint}): "
                         f"{sorted(missing)}; exported: {sorted(scraped[endpoint])}")
