"""`pyserving doctor` as users run it (the real CLI in a subprocess) on broken set-ups built in tmp dirs and on
TF Serving's own test models: each problem named with its fix, exit status 1; a good set-up exits 0."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import TESTDATA, free_port

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def doctor(*flags: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyserving", "doctor", *flags], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def doctor_json(*flags: str) -> tuple[int, dict[str, Any]]:
    result = doctor("--format=json", *flags)
    return result.returncode, json.loads(result.stdout)


def ports() -> list[str]:
    return ["--host=127.0.0.1", f"--port={free_port()}", f"--rest_api_port={free_port()}"]


def findings(report: dict[str, Any], status: str, check: str = "") -> list[dict[str, str]]:
    return [f for f in report["findings"] if f["status"] == status and f["check"].startswith(check)]


def test_a_good_set_up_says_so_and_exits_0() -> None:
    result = doctor(f"--model_base_path={HALF_PLUS_TWO}", "--model_name=half_plus_two", *ports())
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert not [line for line in out.splitlines() if line.startswith("FAIL")]
    assert "OK   model half_plus_two version 123: loads; serving_default (predict) takes x: float" in out
    assert "answers a trial call" in out
    assert "OK   gpu: no GPU found; GPU checks skipped" in out or " GPU(s): " in out  # a GPU machine lists them
    assert out.rstrip().splitlines()[-1].startswith("doctor: 0 FAIL")
    assert "the set-up looks good" in out
    # Loaders' and frameworks' log lines stay out of the way of the report.
    assert "oneDNN" not in result.stderr and "cuInit" not in result.stderr


def test_missing_base_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "my_model"
    code, report = doctor_json(f"--model_base_path={missing}", "--model_name=my_model", *ports())
    assert code == 1
    (fail,) = findings(report, "FAIL", "model my_model")
    assert fail["message"] == f'base path {missing} does not exist (the article\'s "Model not found")'
    assert "--model_base_path" in fail["fix"] and f"{missing}/1/saved_model.pb" in fail["fix"]
    assert report["ok"] is False and report["summary"]["FAIL"] == 1


def test_version_directory_not_named_by_an_integer(tmp_path: Path) -> None:
    base = tmp_path / "my_model"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "v1")
    code, report = doctor_json(f"--model_base_path={base}", "--model_name=my_model", *ports())
    assert code == 1
    (fail,) = findings(report, "FAIL", "model my_model")
    assert "no version directory under base path" in fail["message"] and "v1" in fail["message"]
    assert f"mv {base / 'v1'} {base / '1'}" in fail["fix"]


def test_model_files_directly_in_the_base_path(tmp_path: Path) -> None:
    base = tmp_path / "my_model"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base)
    code, report = doctor_json(f"--model_base_path={base}", *ports())
    assert code == 1
    (fail,) = findings(report, "FAIL", "model default")
    assert f"into a numbered version directory, e.g. {base}/1/" in fail["fix"]


def test_a_stray_directory_next_to_versions_is_a_warning(tmp_path: Path) -> None:
    base = tmp_path / "my_model"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "1")
    (base / "backup").mkdir()
    code, report = doctor_json(f"--model_base_path={base}", "--skip_model_load", *ports())
    assert code == 0, report
    (warn,) = findings(report, "WARN", "model default")
    assert "backup" in warn["message"] and "is not a version" in warn["message"]
    assert "rename it to a number (e.g. 2)" in warn["fix"]


def test_unparsable_model_config(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n  config { name: "m" base_path: "/models/m" \n  colour: 3 }\n}\n')
    code, report = doctor_json(f"--model_config_file={config}", *ports())
    assert code == 1
    fails = findings(report, "FAIL")
    assert len(fails) == 1, fails  # serve's verdict names the same error: reported once
    assert fails[0]["check"] == "model config"
    assert str(config) in fails[0]["message"] and "colour" in fails[0]["message"]
    assert "model_config_list" in fails[0]["fix"]


def test_batching_file_without_enable_batching(tmp_path: Path) -> None:
    code, report = doctor_json(f"--model_base_path={HALF_PLUS_TWO}", "--skip_model_load",
                               f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}", *ports())
    assert code == 1
    fails = findings(report, "FAIL")
    assert [f["check"] for f in fails] == ["batching"], fails
    assert "--enable_batching is not" in fails[0]["message"]
    assert fails[0]["fix"] == "add --enable_batching=true, or drop --batching_parameters_file"
    # The file itself is fine, and the model is still checked although serve would refuse the flags.
    assert findings(report, "OK", "batching") and findings(report, "OK", "model default")


def test_config_files_that_disagree(tmp_path: Path) -> None:
    """Labels on versions that are not there, a `specific` policy naming a missing version, --model_name next to a
    config file, a per-model batching block without --enable_batching, a slow batch timeout."""
    base = tmp_path / "m"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "1")
    config = tmp_path / "models.config"
    config.write_text(f'''model_config_list {{
      config {{
        name: "m" base_path: "{base}" model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: 1 versions: 7 }} }}
        version_labels {{ key: "stable" value: 1 }}
        version_labels {{ key: "canary" value: 9 }}
        batching_parameters {{ max_batch_size {{ value: 16 }} batch_timeout_micros {{ value: 500000 }} }}
      }}
    }}''')
    code, report = doctor_json(f"--model_config_file={config}", "--model_name=m", "--skip_model_load", *ports())
    text = json.dumps(report)
    assert code == 1, text
    (fail,) = findings(report, "FAIL")
    assert fail["message"].startswith('version label "canary" points at version 9, which is not under the base path')
    assert "point the label at a served version (1)" in fail["fix"]
    assert "version policy specific names version(s) 7" in text
    assert "--model_name is ignored when --model_config_file is given" in text
    assert "batching_parameters block batches this model although --enable_batching is not set" in text
    assert "batch_timeout_micros=500000" in text and "lower it to 10000-50000" in text
    assert len(findings(report, "WARN")) == 5  # the four above and --host=127.0.0.1


def test_port_in_use_names_the_process_holding_it(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        code, report = doctor_json(f"--model_base_path={HALF_PLUS_TWO}", "--skip_model_load", "--host=127.0.0.1",
                                   f"--rest_api_port={port}", f"--port={free_port()}")
    assert code == 1
    (fail,) = findings(report, "FAIL", "ports")
    assert fail["message"].startswith(f"REST port {port} on 127.0.0.1 is in use by pid {os.getpid()} (")
    assert "--rest_api_port=N" in fail["fix"]
    assert findings(report, "OK", "ports")  # the gRPC port is free


def test_unknown_host_address_and_bad_flag() -> None:
    code, report = doctor_json(f"--model_base_path={HALF_PLUS_TWO}", "--skip_model_load", "--host=192.0.2.77",
                               f"--port={free_port()}", f"--rest_api_port={free_port()}")
    assert code == 1
    (fail,) = findings(report, "FAIL")
    assert fail["check"] == "address" and "--host=192.0.2.77 cannot be listened on" in fail["message"]
    result = doctor(f"--model_base_path={HALF_PLUS_TWO}", "--rest_api_prot=1")
    assert result.returncode == 1
    assert ("FAIL flags: pyserving serve: error: unknown flag --rest_api_prot; did you mean --rest_api_port?"
            in result.stdout)


# --- models that load badly: one doctor run over a config of four models (TensorFlow is imported once) --------


def _export_models(root: Path) -> None:
    import keras
    import tensorflow as tf

    shutil.copytree(HALF_PLUS_TWO / "00000123", root / "corrupt" / "1")
    pb = root / "corrupt" / "1" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 2.0}

    module = Other()
    tf.saved_model.save(module, str(root / "nosig" / "1"), signatures={"double_it": module.double})

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
    model(tf.zeros((1, 4)))
    tf.saved_model.save(model, str(root / "keras3" / "1"))  # the pitfall: model.export() is the right call

    shutil.copytree(HALF_PLUS_TWO, root / "good")

    onnx_file = root / "onnx" / "1" / "model.onnx"
    onnx_file.parent.mkdir(parents=True)
    onnx_file.write_bytes(b"this is not an ONNX graph")
    for path in (onnx_file, onnx_file.parent):
        os.utime(path, (1, 1))  # written long ago: complete


BadModels = tuple[int, dict[str, Any], Path]


@pytest.fixture(scope="module")
def bad_models_report(tmp_path_factory: pytest.TempPathFactory) -> BadModels:
    root = tmp_path_factory.mktemp("doctor_models")
    # Exported in a child process, so this test process stays free of TensorFlow.
    code = (f"import sys; sys.path[:0] = {sys.path!r}\nfrom pathlib import Path\nfrom test_doctor import "
            f"_export_models\n_export_models(Path({str(root)!r}))")
    subprocess.run([sys.executable, "-c", code],
                   check=True, capture_output=True, timeout=300, cwd=Path(__file__).parent, env=ENV)
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "{platform}" }}\n'
        for name, platform in (("corrupt", "tensorflow"), ("nosig", "tensorflow"), ("keras3", "tensorflow"),
                               ("good", "tensorflow"), ("onnx", "onnx"))) + "}\n")
    code, report = doctor_json(f"--model_config_file={config}", *ports())
    return code, report, root


def test_corrupt_saved_model(bad_models_report: BadModels) -> None:
    code, report, root = bad_models_report
    assert code == 1
    (fail,) = findings(report, "FAIL", "model corrupt version 1")
    assert fail["message"].startswith('does not load (the article\'s "Failed to load model"): ')
    assert f"saved_model_cli show --dir {root / 'corrupt' / '1'} --all" in fail["fix"]
    assert fail["fix"].startswith("re-export the model")


def test_missing_serving_default_lists_the_signatures_there(bad_models_report: BadModels) -> None:
    _, report, _ = bad_models_report
    (fail,) = findings(report, "FAIL", "model nosig version 1")
    assert "has no 'serving_default' signature" in fail["message"]
    assert fail["message"].endswith("its signatures: double_it")
    assert "signatures={'serving_default': fn}" in fail["fix"] and "signature_name" in fail["fix"]


def test_keras3_saved_with_tf_saved_model_save(bad_models_report: BadModels) -> None:
    _, report, _ = bad_models_report
    (fail,) = findings(report, "FAIL", "model keras3 version 1")
    assert "Could not find variable sequential/dense" in fail["message"]
    assert "the Keras 3 pitfall" in fail["message"]
    assert "model.export(path)" in fail["fix"]


def test_other_platforms_load_with_their_runtime(bad_models_report: BadModels) -> None:
    _, report, root = bad_models_report
    (fail,) = findings(report, "FAIL", "model onnx version 1")
    assert fail["message"].startswith('does not load (the article\'s "Failed to load model"): ')
    assert f"Cannot load ONNX model {root / 'onnx' / '1' / 'model.onnx'}" in fail["message"]
    assert fail["fix"] == "re-export the model; the message above says what its runtime could not read"


def test_good_model_next_to_bad_ones(bad_models_report: BadModels) -> None:
    _, report, _ = bad_models_report
    assert findings(report, "OK", "model good version 123")
    assert not findings(report, "FAIL", "model good")
    assert report["summary"]["FAIL"] == 4


def _self_signed(directory: Path, name: str) -> tuple[str, str]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return key.read_text(), cert.read_text()


def test_tls_monitoring_and_auth_files(tmp_path: Path) -> None:
    """A key that is not the certificate's, a monitoring config that enables nothing, an auth config that does not
    parse: each named, and the model still checked."""
    _, cert_a = _self_signed(tmp_path, "a")
    key_b, _ = _self_signed(tmp_path, "b")
    ssl_config = tmp_path / "ssl.config"

    def escaped(pem: str) -> str:
        return pem.replace("\n", "\\n")

    ssl_config.write_text(f'server_key: "{escaped(key_b)}"\nserver_cert: "{escaped(cert_a)}"\n')
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { path: "/metrics" }\n')
    auth = tmp_path / "auth.config"
    auth.write_text('api_key { name: "ci" sha256: "abc" scope: "m:predict" \n')
    code, report = doctor_json(f"--model_base_path={HALF_PLUS_TWO}", "--skip_model_load",
                               f"--ssl_config_file={ssl_config}", f"--monitoring_config_file={monitoring}",
                               f"--auth_config_file={auth}", *ports())
    assert code == 1
    fails = {f["check"]: f for f in findings(report, "FAIL")}
    assert set(fails) == {"tls", "auth"}, report
    assert "OpenSSL refuses its key or certificates" in fails["tls"]["message"]
    assert "server_key is the private key of server_cert" in fails["tls"]["fix"]
    assert f"--auth_config_file={auth}" in fails["auth"]["message"]
    (warn,) = findings(report, "WARN", "monitoring")
    assert "prometheus_config.enable is not true" in warn["message"]
    assert findings(report, "OK", "model default")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a real nvidia-smi")
@pytest.mark.parametrize(("max_batch_size", "status"), [(64, "OK"), (4096, "WARN")])
def test_gpu_memory_against_the_batch_size(tmp_path: Path, max_batch_size: int, status: str) -> None:
    """On a CPU machine, an `nvidia-smi` stand-in on PATH (the external tool, answering as on a 1 GiB GPU) drives
    the comparison: 224x224x3 float images take 0.6 MB each, so a batch of 4096 cannot fit and 64 can."""
    from pyserving.runtimes.memory import write_model

    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho 'NVIDIA Test GPU, 1024, 100'\n")
    tool.chmod(0o755)
    version = tmp_path / "images" / "1"
    write_model(str(version), {"signatures": {"serving_default": {
        "inputs": {"image": {"dtype": "DT_FLOAT", "shape": [-1, 224, 224, 3]}},
        "outputs": {"image": {"dtype": "DT_FLOAT", "shape": [-1, 224, 224, 3]}}}}, "scale": 1.0, "offset": 0.0})
    for path in (version / "model.json", version):
        os.utime(path, (1, 1))  # written long ago: complete
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "images" base_path: "{version.parent}" '
                      f'model_platform: "memory" }} }}')
    batching = tmp_path / "batching.config"
    batching.write_text(f"max_batch_size {{ value: {max_batch_size} }}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pyserving", "doctor", "--format=json", f"--model_config_file={config}",
         "--enable_batching", f"--batching_parameters_file={batching}", *ports()],
        capture_output=True, text=True, timeout=120, env={**ENV, "PATH": f"{tool.parent}:{ENV['PATH']}"})
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    gpu = findings(report, "OK", "gpu")[0]
    assert gpu["message"] == "1 GPU(s): NVIDIA Test GPU 1024 MiB (100 MiB in use)"
    (estimate,) = [f for f in report["findings"] if f["check"] == "gpu" and "model images" in f["message"]]
    assert estimate["status"] == status
    need = 224 * 224 * 3 * 4 * max_batch_size >> 20
    assert f"a batch of {max_batch_size} " in estimate["message"] and f"{need} MiB" in estimate["message"]
    if status == "WARN":
        assert "lower max_batch_size" in estimate["fix"]
