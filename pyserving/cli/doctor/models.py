"""Doctor's checks of each model: base path, version directories, version policy, labels, and each served
version loaded by the runtime that would serve it, with the signature clients call and one trial call."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyserving.cli.doctor.report import Report, Status
from pyserving.options import ModelConfig, RuntimeOptions, ServerOptions
from pyserving.runtimes.base import Servable, Signature

_CALLED_SIGNATURE = "serving_default"
_SAVED_MODEL_CLI = "saved_model_cli show --dir {dir} --all"
# The trial call's inputs are zeros of the signature's shapes (unknown dimensions 1); a signature whose fixed
# shapes ask for more than this gets no trial call rather than a doctor that runs out of memory.
_MAX_TRIAL_BYTES = 64 << 20


def check_model(model: ModelConfig, v: dict[str, Any], runtime_options: RuntimeOptions,
                options: ServerOptions | None, report: Report, *, load: bool) -> list[tuple[str, dict[str, Any]]]:
    """Base path, versions, policy, labels and each served version; returns (version dir, signature inputs) of
    the versions that loaded, for the GPU estimate."""
    from pyserving.core.source import versions_on_disk
    from pyserving.core.version_policy import aspired_versions

    check = f"model {model.name}"
    base = model.base_path
    if "://" in base:
        report.add("WARN", check, f"base path {base} is remote; doctor checks local directories only",
                   "run doctor where the files are, or copy one version locally to check it")
        return []
    if not os.path.exists(base):
        setting = "base_path in the model config" if v["model_config_file"] else "--model_base_path"
        report.fail(check, f"base path {base} does not exist (the article's \"Model not found\")",
                    f"create it, or correct {setting}; a model's versions are numbered directories under it, e.g. "
                    f"{base}/1/saved_model.pb")
        return []
    if not os.path.isdir(base):
        report.fail(check, f"base path {base} is a file, not a directory",
                    f"give the directory that holds the numbered version directories, e.g. {os.path.dirname(base)}")
        return []
    try:
        on_disk = versions_on_disk(base)
        with os.scandir(base) as entries:
            children = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        report.fail(check, f"base path {base} cannot be listed: {exc}", "give the server's user read and execute "
                    "permission on it")
        return []
    others = [name for name in children if not (name.isascii() and name.isdigit())]
    looks_like_version = any(os.path.exists(os.path.join(base, f)) for f in (
        "saved_model.pb", "saved_model.pbtxt", "model.onnx", "model.pt", "model.pt2", "model.tflite", "model.py"))
    if not on_disk:
        if looks_like_version:
            fix = (f"move the model files into a numbered version directory, e.g. {base}/1/, and keep the base path "
                   f"at {base}")
        elif others:
            fix = (f"rename the version directory to an integer, e.g. mv {os.path.join(base, others[0])} "
                   f"{os.path.join(base, '1')} (TF Serving reads only numbered directories as versions)")
        else:
            fix = f"export the model into {base}/1/ (versions are directories named by integers)"
        found = f"; it holds {', '.join(others)}, which are not version numbers" if others else ""
        report.fail(check, f"no version directory under base path {base}{found}: the server would wait for one "
                    "and never become ready", fix)
        return []
    for name in others:
        report.add("WARN", check, f"directory {os.path.join(base, name)} is not a version (its name is not an "
                   "integer) and is ignored", f"rename it to a number (e.g. {max(on_disk) + 1}) to serve it, or "
                   "move it out of the base path")
    served = aspired_versions(model.version_policy, on_disk)
    policy = model.version_policy
    if policy.kind == "specific":
        missing = sorted(set(policy.versions) - set(on_disk))
        if missing:
            status: Status = "FAIL" if not served else "WARN"
            report.add(status, check, f"version policy specific names version(s) {', '.join(map(str, missing))}, "
                       f"not found under {base} (versions there: {', '.join(map(str, sorted(on_disk)))})",
                       "export the missing version(s) or correct the list in model_version_policy { specific "
                       "{ versions: N } }")
            if not served:
                return []
    labels = dict(model.version_labels)
    allow_unavailable = v["allow_version_labels_for_unavailable_models"]
    for label, version in sorted(labels.items()):
        if version not in served:
            where = "is not under the base path" if version not in on_disk else "is not served by the version policy"
            message = f'version label "{label}" points at version {version}, which {where}'
            fix = (f"point the label at a served version ({', '.join(map(str, served))}) or export version {version}")
            if allow_unavailable:
                report.add("WARN", check, message + " (allowed by --allow_version_labels_for_unavailable_models)", fix)
            else:
                report.fail(check, message + ": serve refuses to start (TF Serving: \"Request to assign label to "
                            "version ... which is not currently available for inference\")", fix)
    if model.traffic_split is not None:
        for arm, _weight in model.traffic_split.arms:
            version = labels.get(arm) if isinstance(arm, str) else arm
            if version is not None and version not in served:
                report.fail(check, f"the traffic split sends requests to version {version}, which is not served "
                            f"(served: {', '.join(map(str, served))})", "export that version, or change the "
                            "percentage arms to served versions")
    report.add("OK", check, f"base path {base}: version(s) {', '.join(map(str, sorted(on_disk)))} found; serving "
               f"{', '.join(map(str, served))} (policy {policy.kind})")
    loaded: list[tuple[str, dict[str, Any]]] = []
    _check_batching_blocks(model, v, options, served, on_disk, report)
    if not load:
        return loaded
    for version in served:
        inputs = _check_version(model, version, on_disk[version], runtime_options, v, report)
        if inputs is not None:
            loaded.append((on_disk[version], inputs))
    return loaded


def _check_batching_blocks(model: ModelConfig, v: dict[str, Any], options: ServerOptions | None,
                           served: list[int], on_disk: dict[int, str], report: Report) -> None:
    from pyserving.config.batching_config import batching_for_version

    check = f"model {model.name}"
    if model.batching is not None and not v["enable_batching"]:
        report.add("WARN", check, "the model config's batching_parameters block batches this model although "
                   "--enable_batching is not set (TensorFlow Serving has no such block and would not batch)",
                   "add --enable_batching=true to say so, or drop the block to serve unbatched")
    if not v["enable_per_model_batching_parameters"]:
        return
    for version in served:
        try:
            batching_for_version(model, on_disk[version], global_options=options.batching if options else None,
                                 per_model_files=True)
        except (ValueError, OSError) as exc:
            report.fail(check, f"version {version}: {exc}", "correct or remove the version's batching_params.pbtxt",
                        error=str(exc))


def _load_fix(message: str, version_dir: str, platform: str) -> str:
    cli = _SAVED_MODEL_CLI.format(dir=version_dir)
    if "could not be found in SavedModel" in message or "MetaGraphDef associated with tags" in message:
        return f"give --saved_model_tags=TAGS with the tag set the export has (see `{cli}`)"
    if "Could not find SavedModel" in message:
        return (f"export a SavedModel into {version_dir} (saved_model.pb and variables/), e.g. with "
                "model.export(path) in Keras 3 or tf.saved_model.save")
    if "allow_python_models" in message:
        return "add --allow_python_models=true if you trust model.py (it runs in the server)"
    if "warmup" in message.lower() or "warm-up" in message.lower():
        return f"correct or remove {version_dir}/assets.extra/tf_serving_warmup_requests"
    if platform in ("tensorflow", "auto"):
        return f"re-export the model (the files look damaged or from an incompatible version); check it with `{cli}`"
    return "re-export the model; the message above says what its runtime could not read"


def _check_version(model: ModelConfig, version: int, version_dir: str, runtime_options: RuntimeOptions,
                   v: dict[str, Any], report: Report) -> dict[str, Any] | None:
    """Load one version with the runtime that would serve it, check its signature and make one trial call."""
    from pyserving.errors import ServingError
    from pyserving.runtimes.registry import get_runtime

    check = f"model {model.name} version {version}"
    platform = model.platform
    try:
        runtime = get_runtime(platform)
        if not runtime.is_complete(version_dir):
            report.add("WARN", check, f"{version_dir} looks incompletely written (a copy in progress?); the server "
                       "waits until it is complete", "let the copy finish, or export into a temporary directory "
                       "and rename it into the base path")
        servable = runtime.load(version_dir, runtime_options)
    except ServingError as exc:
        report.fail(check, f"does not load (the article's \"Failed to load model\"): {exc.message}",
                    _load_fix(exc.message, version_dir, platform))
        return None
    except Exception as exc:  # a runtime's unexpected failure is still the model's problem to report
        report.fail(check, f"does not load: {type(exc).__name__}: {exc}", _load_fix(str(exc), version_dir, platform))
        return None
    try:
        return _check_signature(servable, check, version_dir, v, report)
    finally:
        servable.unload()


def _check_signature(servable: Servable, check: str, version_dir: str, v: dict[str, Any],
                     report: Report) -> dict[str, Any] | None:
    from pyserving.errors import ServingError
    from pyserving.runtimes.base import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD

    signatures = {k: s for k, s in servable.signatures.items() if not k.startswith("__")}
    sig = signatures.get(_CALLED_SIGNATURE)
    if sig is None:
        have = ", ".join(sorted(signatures)) or "none"
        report.fail(check, f"loads, but has no {_CALLED_SIGNATURE!r} signature, the one requests without "
                    f"signature_name call (they would get FAILED_PRECONDITION); its signatures: {have}",
                    "re-export with signatures={'serving_default': fn} (Keras 3: model.export(path) writes it), or "
                    "have every client send \"signature_name\"")
        return None
    methods = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)
    if sig.method_name not in methods and v["enable_signature_method_name_check"]:
        report.fail(check, f"signature {_CALLED_SIGNATURE} has method name {sig.method_name!r}; with "
                    "--enable_signature_method_name_check requests to it are refused",
                    "drop --enable_signature_method_name_check, or re-export with a predict/classify/regress method")
    feed = _trial_inputs(sig)
    answered = False
    if feed is not None:
        described = ", ".join(f"{k}{list(a.shape)}" for k, a in feed.items()) or "no inputs"
        try:
            servable.run(_CALLED_SIGNATURE, feed, sorted(sig.outputs))
            answered = True
        except Exception as exc:  # the runtime's error, whatever its kind, is the finding
            text = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            if "Could not find variable" in text:
                first = text.splitlines()[0].split(". This could mean")[0]
                report.fail(check, f"loads, but a call fails: {first} -- the Keras 3 "
                            "pitfall: tf.saved_model.save(model) of a Keras 3 model writes variables that a "
                            "graph-mode loader (TF Serving's and pyserving's) cannot restore",
                            "re-export with model.export(path) (Keras 3) or keras.export.ExportArchive, which "
                            "write a SavedModel TF Serving can serve")
                return None
            first_line = text.splitlines()[0] if text else type(exc).__name__
            report.add("WARN", check, f"a trial call of {_CALLED_SIGNATURE} with zeros ({described}) failed: "
                       f"{first_line}", "fine if the model refuses such inputs; otherwise try a real request "
                       f"against it (see `{_SAVED_MODEL_CLI.format(dir=version_dir)}`)")
    names = ", ".join(f"{k}: {s.dtype.short_name}{list(s.shape) if s.shape is not None else '[?]'}"
                      for k, s in sorted(sig.inputs.items()))
    method = sig.method_name.rsplit("/", 1)[-1]
    report.add("OK", check, f"loads; {_CALLED_SIGNATURE} ({method}) takes {names or 'no inputs'}"
               + (" and answers a trial call" if answered else ""))
    return dict(sig.inputs)


def _trial_inputs(sig: Signature) -> dict[str, np.ndarray] | None:
    """Zeros (empty strings) of each input's shape, unknown dimensions 1; None when no trial call can be made."""
    feed: dict[str, np.ndarray] = {}
    total = 0
    for alias, spec in sig.inputs.items():
        if alias in sig.defaults:
            continue
        shape = tuple(1 if d is None else d for d in (spec.shape if spec.shape is not None else (1,)))
        try:
            dtype = spec.dtype.numpy
        except TypeError:  # a type a request cannot carry (resource, variant)
            return None
        total += int(np.prod(shape, dtype=np.int64)) * max(dtype.itemsize, 8)
        if total > _MAX_TRIAL_BYTES:
            return None
        feed[alias] = np.full(shape, b"", dtype=object) if dtype == np.dtype(object) else np.zeros(shape, dtype)
    return feed
