"""deploy/prometheus: the scrape config and alert rules are valid (`promtool check`), and the alert rules' unit
tests pass (`promtool test rules deploy/prometheus/alerts_test.yml`: each alert firing and staying quiet)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed, so the Prometheus config and alert rules cannot be checked. .ci/run must "
            "install Debian's prometheus package, which provides promtool: "
            "`apt-get update && apt-get install -y prometheus`."
        )
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    output = f"$ promtool {' '.join(args)}\n{result.stdout}{result.stderr}"
    print(output)
    assert result.returncode == 0, output


def test_alert_rules_are_valid() -> None:
    run_promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))


def test_scrape_config_is_valid() -> None:
    # also checks the rule files it names (alerts.yml, relative to the config)
    run_promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_alert_rules_unit_tests_pass() -> None:
    run_promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))


def test_every_alert_has_a_unit_test_and_the_articles_thresholds() -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text()
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) == len(set(alerts)) >= 10, alerts
    untested = [a for a in alerts if f"alertname: {a}\n" not in tests]
    assert not untested, f"alerts without a promtool unit test: {untested}"
    # the article's table: P99 > 100 ms, queue > 100, GPU < 60 %, load time > 10 s
    for fragment in ("/ 1000 > 100", "tensorflow_serving_batching_queue_length) > 100",
                     "tensorflow_serving_gpu_utilization[5m]) < 60", "tensorflow_serving_model_load_time_seconds) > 10"):
        assert fragment in rules, fragment
