"""`pyserving status [--rest URL | --grpc HOST:PORT] [--model M] [--format json]`: what a running server serves.

Against pyserving, GET /v1/models (pyserving's addition) lists every model with its versions' states, its labels
and its traffic split (weights now and as configured, per-arm totals, rollbacks). TF Serving has no list: there
`--model` names the model, and its status comes from GET /v1/models/M or gRPC GetModelStatus, the APIs both
servers share (TF Serving reports no labels or splits; the table leaves those columns empty).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

from pyserving.cli.client import ClientError, RestError, grpc_call, rest

PROG = "pyserving status"


def _version_rows(statuses: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": int(s["version"]), "state": s.get("state", "UNKNOWN"),
             "error_code": s.get("status", {}).get("error_code", "OK") or "OK",
             "error_message": s.get("status", {}).get("error_message", "")} for s in statuses]


def _model(name: str, statuses: Sequence[dict[str, Any]], listing: dict[str, Any] | None) -> dict[str, Any]:
    return {"name": name, "versions": _version_rows(statuses),
            "version_labels": {k: int(v) for k, v in (listing or {}).get("version_labels", {}).items()},
            "traffic_split": (listing or {}).get("traffic_split")}


def _list_models(url: str, token: str | None, timeout_s: float) -> list[dict[str, Any]] | None:
    """pyserving's model list, or None from a server without one (TF Serving: 400 "Missing model name")."""
    try:
        doc = rest(url, "/v1/models", token=token, timeout_s=timeout_s)
    except RestError as exc:
        if exc.status in (400, 404):
            return None
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        return None
    return doc["models"]


def from_rest(url: str, model: str | None, token: str | None, timeout_s: float) -> list[dict[str, Any]]:
    listing = _list_models(url, token, timeout_s)
    if model is None:
        if listing is None:
            raise ClientError(f"{url} has no model list (TF Serving answers GET /v1/models with an error); "
                              "name the model with --model")
        return [_model(m["name"], m.get("model_version_status", []), m) for m in listing]
    # TF Serving's own status call, so the answer is the same from either server; the list only adds extras.
    doc = rest(url, f"/v1/models/{urllib.parse.quote(model, safe='')}", token=token, timeout_s=timeout_s)
    extras = next((m for m in listing or [] if m.get("name") == model), None)
    return [_model(model, doc.get("model_version_status", []), extras)]


def from_grpc(target: str, model: str, token: str | None, timeout_s: float) -> list[dict[str, Any]]:
    from pyserving.codecs.tfserving.protos.error_codes_pb2 import Code
    from pyserving.codecs.tfserving.protos.get_model_status_pb2 import (
        GetModelStatusRequest,
        GetModelStatusResponse,
        ModelVersionStatus,
    )
    from pyserving.codecs.tfserving.protos.services import MODEL_SERVICE

    request = GetModelStatusRequest()
    request.model_spec.name = model
    response = grpc_call(target, MODEL_SERVICE, "GetModelStatus", request, GetModelStatusResponse, token=token,
                         timeout_s=timeout_s)
    statuses = [{"version": s.version, "state": ModelVersionStatus.State.Name(s.state),
                 "status": {"error_code": Code.Name(s.status.error_code) if s.status.error_code in Code.values()
                            else str(s.status.error_code), "error_message": s.status.error_message}}
                for s in response.model_version_status]
    return [_model(model, statuses, None)]


# --- the table -----------------------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip() for r in [header, *rows]]


def _weight_text(weight: float) -> str:
    return f"{weight:g}"


def _version_weights(model: dict[str, Any]) -> dict[int, float]:
    """Each version's share of unpinned traffic now, whether its arm names the version or a label of it."""
    split = model.get("traffic_split") or {}
    out: dict[int, float] = {}
    for arm in split.get("arms", []):
        if arm.get("role") == "shadow":
            continue
        version = int(arm["version"]) if "version" in arm else model["version_labels"].get(arm.get("label", ""))
        if version is not None:
            out[version] = out.get(version, 0.0) + float(arm.get("weight", 0.0))
    return out


def table_lines(models: Sequence[dict[str, Any]]) -> list[str]:
    if not models:
        return ["The server serves no models."]
    any_split = any(m.get("traffic_split") for m in models)
    header = ["MODEL", "VERSION", "STATE", "LABELS", *(["WEIGHT"] if any_split else []), "STATUS"]
    rows: list[list[str]] = []
    for m in models:
        labels_of: dict[int, list[str]] = {}
        for label, version in sorted(m["version_labels"].items()):
            labels_of.setdefault(version, []).append(label)
        weights = _version_weights(m)
        if not m["versions"]:
            rows.append([m["name"], "-", "(no versions)", "", *([""] if any_split else []), ""])
        for v in m["versions"]:
            status = "OK" if v["error_code"] == "OK" else f"{v['error_code']}: {v['error_message']}"
            weight = [_weight_text(weights[v["version"]]) if v["version"] in weights else ""] if any_split else []
            rows.append([m["name"], str(v["version"]), v["state"], ",".join(labels_of.get(v["version"], [])),
                         *weight, status])
    lines = _table(header, rows)
    for m in models:
        split = m.get("traffic_split")
        if not split:
            continue
        sticky = f"sticky on {split['sticky_key']}" if split.get("sticky_key") else "not sticky"
        lines += ["", f"Traffic split of {m['name']} ({sticky}): {split.get('rollbacks', 0)} rollback(s), "
                      f"{split.get('promotions', 0)} promotion(s), {split.get('shadow_dropped', 0)} shadow "
                      "request(s) dropped"]
        arm_rows = []
        for arm in split.get("arms", []):
            name = f"version {arm['version']}" if "version" in arm else f"label {arm.get('label', '?')}"
            note = f"rolled back: {arm['rolled_back']}" if arm.get("rolled_back") else ""
            arm_rows.append([name, arm.get("role", ""), _weight_text(float(arm.get("weight", 0.0))),
                             str(arm.get("configured_weight", "")), str(arm.get("requests", 0)),
                             str(arm.get("errors", 0)), f"{float(arm.get('mean_latency_ms', 0.0)):.3f}", note])
        lines += _table(["ARM", "ROLE", "WEIGHT", "CONFIGURED", "REQUESTS", "ERRORS", "MEAN_MS", "NOTE"], arm_rows,
                        indent="  ")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Models, versions, states, labels and traffic splits (weights, rollbacks) of a running "
                    "pyserving or TF Serving. pyserving lists every model; TF Serving has no list, so name the "
                    "model with --model (its labels and splits are not reported by TF Serving's APIs).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rest", metavar="URL", help="the server's REST address (default http://localhost:8501)")
    where.add_argument("--grpc", metavar="HOST:PORT", help="ask over gRPC (ModelService/GetModelStatus; needs --model)")
    p.add_argument("--model", help="only this model (required against TF Serving and with --grpc)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")
    p.add_argument("--token", help="API key or JWT for a server with --auth_config_file (default: $PYSERVING_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    return p


def main(argv: Sequence[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.grpc and not args.model:
        p.error("--grpc needs --model: gRPC has no call that lists models")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    try:
        if args.grpc:
            models = from_grpc(args.grpc, args.model, args.token, args.timeout)
        else:
            models = from_rest(args.rest or "http://localhost:8501", args.model, args.token, args.timeout)
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"models": models}, indent=2))
    else:
        print("\n".join(table_lines(models)))
    return 0
