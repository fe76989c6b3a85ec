"""`pyserving predict` against real servers over REST and gRPC: TF Serving's half_plus_two from JSON and .npy
files, and a small image classifier from PNG and JPEG files (resized, scaled, top-k)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cli_run import one_line_error, pyserving
from conftest import RunningServer, free_port, model_options, run_server

PROG = "pyserving predict"
SIDE = 8
CLASSES = ["red", "green", "blue", "gray"]


def export_colour_classifier(target: Path) -> None:
    """Scores [r, g, b, (r+g+b)/3] of an image's mean colour, x10, softmaxed: a classifier whose answer a test
    can work out. serving_default takes floats in 0..1; "raw" takes uint8 pixels; "encoded" takes PNG/JPEG bytes."""
    import tensorflow as tf

    def classify(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(pixels, axis=[1, 2])
        logits = tf.concat([mean, tf.reduce_mean(mean, axis=1, keepdims=True)], axis=1) * 10.0
        return {"probabilities": tf.nn.softmax(logits)}

    class Colours(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIDE, SIDE, 3], tf.float32, name="image")])
        def floats(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return classify(image)

        @tf.function(input_signature=[tf.TensorSpec([None, SIDE, SIDE, 3], tf.uint8, name="image")])
        def raw(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return classify(tf.cast(image, tf.float32) / 255.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def encoded(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
            pixels = tf.image.decode_image(image_bytes[0], channels=3, expand_animations=False)
            pixels = tf.image.resize(tf.cast(pixels, tf.float32)[tf.newaxis] / 255.0, [SIDE, SIDE])
            return classify(pixels)

    module = Colours()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.floats, "raw": module.raw,
                                                         "encoded": module.encoded})


def expected_probabilities(rgb: tuple[float, float, float]) -> np.ndarray:
    logits = np.array([*rgb, sum(rgb) / 3]) * 10.0
    return np.exp(logits) / np.exp(logits).sum()


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("colours")
    export_colour_classifier(base / "1")
    with run_server(model_options("colours", base)) as server:
        yield server


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    red = folder / "red.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(red)  # not 8x8: predict must resize it
    blue = folder / "blue.jpg"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(blue, quality=95)
    return {"red": red, "blue": blue}


def transports(server: RunningServer) -> list[list[str]]:
    return [["--rest", server.rest_url], ["--grpc", server.grpc_target]]


def run_json(*args: object) -> dict:
    result = pyserving("predict", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_half_plus_two_from_json_and_npy(tf1_server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1.0, 2.0, 5.0]")
    (tmp_path / "body.json").write_text('{"instances": [1.0, 2.0, 5.0]}')
    np.save(tmp_path / "batch.npy", np.array([[1.0], [2.0], [5.0]], np.float32))
    np.save(tmp_path / "one.npy", np.array([6.0]))  # one dimension short of (-1, 1): a batch of 1, float64 -> float
    for where in transports(tf1_server):
        for name in ("list.json", "body.json"):
            doc = run_json("--model", "default", "--input", tmp_path / name, *where)
            assert np.ravel(doc["outputs"]["y"]).tolist() == [2.5, 3.0, 4.5], (where, name)
        assert run_json("--model", "default", "--input", tmp_path / "batch.npy", *where)["outputs"] == {
            "y": [[2.5], [3.0], [4.5]]}
        assert run_json("--model", "default", "--input", tmp_path / "one.npy", *where)["outputs"] == {"y": [[5.0]]}
    text = pyserving("predict", "--model", "default", "--input", tmp_path / "batch.npy", "--rest", tf1_server.rest_url)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ["outputs['y']: float32 shape (3, 1)", "  [[2.5],", "   [3. ],", "   [4.5]]"]
    # another signature, named in the request as TF Serving's clients do
    regress = run_json("--model", "default", "--signature", "regress_x2_to_y3", "--input", tmp_path / "batch.npy",
                       "--grpc", tf1_server.grpc_target)
    assert regress["outputs"] == {"outputs": [[3.5], [4.0], [5.5]]}  # y3 = x2 / 2 + 3
    # or named by the request body itself
    (tmp_path / "named.json").write_text('{"signature_name": "regress_x2_to_y3", "inputs": [[1.0]]}')
    for where in transports(tf1_server):
        assert run_json("--model", "default", "--input", tmp_path / "named.json", *where)["outputs"] == {
            "outputs": [[3.5]]}, where


def test_images_are_resized_scaled_and_classified(colours: RunningServer, images: dict[str, Path]) -> None:
    red = expected_probabilities((1.0, 0.0, 0.0))
    for where in transports(colours):
        for signature in ("serving_default", "raw", "encoded"):  # 0..1 floats, 0..255 uint8, the file's bytes
            doc = run_json("--model", "colours", "--signature", signature, "--input", images["red"], *where)
            assert np.allclose(doc["outputs"]["probabilities"], [red], atol=1e-5), (where, signature, doc)
            assert [e["index"] for e in doc["top_k"]["probabilities"][0]] == [0, 3, 1, 2]
    blue = run_json("--model", "colours", "--input", images["blue"], "--grpc", colours.grpc_target)
    assert np.allclose(blue["outputs"]["probabilities"], [expected_probabilities((0.0, 0.0, 1.0))], atol=0.02)
    assert blue["top_k"]["probabilities"][0][0]["index"] == 2


def test_top_k_is_printed_with_labels(colours: RunningServer, images: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    result = pyserving("predict", "--model", "colours", "--input", images["red"], "--top_k", "2", "--labels", labels,
                       "--rest", colours.rest_url)
    assert result.returncode == 0, result.stderr
    red = expected_probabilities((1.0, 0.0, 0.0))
    lines = result.stdout.splitlines()
    assert lines[0] == "outputs['probabilities']: float32 shape (1, 4)"
    assert lines[-3:] == ["  top 2:", f"    1. index 0 red  score {red[0]:.6g}",
                          f"    2. index 3 gray  score {red[3]:.6g}"]
    no_top = pyserving("predict", "--model", "colours", "--input", images["red"], "--top_k", "0", "--rest",
                       colours.rest_url)
    assert no_top.returncode == 0 and "top" not in no_top.stdout


def test_errors_are_one_line(tf1_server: RunningServer, colours: RunningServer, images: dict[str, Path],
                             tmp_path: Path) -> None:
    good = tmp_path / "x.json"
    good.write_text("[1.0]")
    rest = ["--rest", tf1_server.rest_url]

    def error(*args: object) -> str:
        return one_line_error(pyserving("predict", *args), PROG)

    dead = f"127.0.0.1:{free_port()}"
    assert f"cannot reach http://{dead}" in error("--model", "default", "--input", good, "--rest", f"http://{dead}")
    assert f"cannot reach {dead}" in error("--model", "default", "--input", good, "--grpc", dead)
    assert "HTTP 404: Servable not found for request: Latest(nope)" in error("--model", "nope", "--input", good, *rest)
    assert "NOT_FOUND: Servable not found for request: Latest(nope)" in error(
        "--model", "nope", "--input", good, "--grpc", tf1_server.grpc_target)
    assert "has no signature 'nope'; its signatures: classify_x_to_y, " in error(
        "--model", "default", "--signature", "nope", "--input", good, *rest)
    assert "no such file" in error("--model", "default", "--input", tmp_path / "missing.json", *rest).lower()
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    assert "not a .npy array" in error("--model", "default", "--input", tmp_path / "bad.npy", *rest)
    (tmp_path / "bad.json").write_text("{oops")
    assert "not JSON" in error("--model", "default", "--input", tmp_path / "bad.json", *rest)
    (tmp_path / "x.csv").write_text("1.0")
    assert "use a .json, .npy, .png, .jpg or .jpeg file" in error("--model", "default", "--input", tmp_path / "x.csv",
                                                                  *rest)
    assert "an image needs an NHWC input" in error("--model", "default", "--input", images["red"], *rest)
    (tmp_path / "words.json").write_text('["a", "b"]')
    assert "cannot make a DT_FLOAT tensor" in error("--model", "default", "--input", tmp_path / "words.json",
                                                    "--grpc", tf1_server.grpc_target)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert "not an image Pillow can read" in error("--model", "colours", "--input", tmp_path / "broken.png",
                                                   "--rest", colours.rest_url)
    (tmp_path / "named.json").write_text('{"signature_name": "regress_x2_to_y3", "inputs": [[1.0]]}')
    assert "--signature serving_default but the request body names signature_name 'regress_x2_to_y3'" in error(
        "--model", "default", "--signature", "serving_default", "--input", tmp_path / "named.json", *rest)
    (tmp_path / "other.json").write_text('{"inputs": {"nope": [1.0]}}')
    assert "signature serving_default has no input 'nope'; its inputs: x" in error(
        "--model", "default", "--input", tmp_path / "other.json", *rest)
    (tmp_path / "b64.json").write_text('{"instances": [{"b64": "%%%"}]}')
    assert 'a "b64" value is not base64' in error("--model", "default", "--input", tmp_path / "b64.json", *rest)
    # the server's own refusal (TF Serving's words) comes back as it is
    assert "HTTP 404: Servable not found for request: Specific(default, 7)" in error(
        "--model", "default", "--version", "7", "--input", good, *rest)
