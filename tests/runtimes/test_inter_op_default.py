"""TensorFlow's inter-op threads: a model's ops run in the calling worker thread unless the user asks for a pool
(--tensorflow_inter_op_parallelism, --tensorflow_session_parallelism, or a --tensorflow_session_config_file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.config.flags import parse_flags, server_options
from pyserving.options import RuntimeOptions


def options(*argv: str) -> RuntimeOptions:
    values, _ = parse_flags(["--model_name=m", "--model_base_path=/tmp/m", *argv])
    return server_options(values).runtime


@pytest.mark.parametrize(("argv", "threads"), [
    ([], -1),  # nobody asked: the caller's thread
    (["--tensorflow_inter_op_parallelism=3"], 3),  # TF Serving's pool, as asked
    (["--tensorflow_session_parallelism=2"], 2),
    (["--tensorflow_intra_op_parallelism=2"], -1),  # intra-op alone leaves inter-op at our default
])
def test_inter_op_threads_from_the_flags(argv: list[str], threads: int) -> None:
    from pyserving.runtimes.tensorflow_session import session_config

    assert session_config(options(*argv)).inter_op_parallelism_threads == threads


@pytest.mark.parametrize(("text", "threads"), [
    ("intra_op_parallelism_threads: 2\n", 0),  # a config file that leaves it out gets TensorFlow's own pool
    ("inter_op_parallelism_threads: 5\n", 5),
    ("inter_op_parallelism_threads: -1\n", -1),
])
def test_a_session_config_file_keeps_its_own_inter_op_setting(tmp_path: Path, text: str, threads: int) -> None:
    from pyserving.runtimes.tensorflow_session import session_config

    file = tmp_path / "session.config"
    file.write_text(text)
    assert session_config(options(f"--tensorflow_session_config_file={file}")).inter_op_parallelism_threads == threads
    # the flag still wins over the file, as TF Serving's flags do
    assert session_config(options(f"--tensorflow_session_config_file={file}",
                                  "--tensorflow_inter_op_parallelism=7")).inter_op_parallelism_threads == 7
