"""compose.yaml and the Dockerfile, checked as far as this machine can (no Docker engine here)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import tomllib
import types
import unittest.mock

import falcon.testing
import pytest
import yaml

from api.app import Deps, create_app
from tracker import cli
from tracker.config import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
TRACKER_SERVICES = [name for name, spec in SERVICES.items() if spec.get("command", [""])[0] == "tracker"]
SETTINGS_ENV = {"TRACKER_" + field.name.upper() for field in dataclasses.fields(Settings)}


def test_the_system_is_all_there():
    assert {"rabbitmq", "postgres", "migrate", "api", "consumer"} <= set(SERVICES)
    assert "management" in SERVICES["rabbitmq"]["image"]
    assert SERVICES["consumer"]["deploy"]["replicas"] == 2
    assert SERVICES["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", ["rabbitmq", "postgres", "api", "consumer"])
def test_long_running_services_have_health_checks(name):
    assert SERVICES[name]["healthcheck"]["test"]


def test_tracker_services_run_commands_the_cli_has():
    subcommands = cli._parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert sorted(TRACKER_SERVICES) == ["api", "consumer", "migrate"]
    for name in TRACKER_SERVICES:
        command = SERVICES[name]["command"]
        assert command[1] in subcommands, command


def test_api_and_consumers_wait_for_the_migration():
    for name in ("api", "consumer"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_environment_names_are_the_settings():
    for name in TRACKER_SERVICES:
        for variable in SERVICES[name]["environment"]:
            assert variable in SETTINGS_ENV, f"{name} sets {variable}, which the code never reads"


def test_no_credential_has_a_default():
    text = (ROOT / "compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "TRACKER_SECRET"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), secret
    assert "guest" not in text


def test_the_api_health_check_asks_the_apis_readiness():
    url = re.search(r"http://127\.0\.0\.1:8000(/[^']+)", " ".join(SERVICES["api"]["healthcheck"]["test"]))
    assert url is not None and url.group(1) == "/readyz"
    ready = types.SimpleNamespace(engine=None)
    nobody = types.SimpleNamespace(get=lambda _name: None)
    deps = Deps(jobs=ready, users=nobody, throttle=None, tokens=None, settings=Settings())  # type: ignore[arg-type]
    with unittest.mock.patch("api.app.schema_problem", return_value=None):
        result = falcon.testing.TestClient(create_app(deps)).simulate_get(url.group(1))
    assert result.status_code == 200
    with unittest.mock.patch("api.app.schema_problem", return_value="the database does not answer"):
        result = falcon.testing.TestClient(create_app(deps)).simulate_get(url.group(1))
    assert result.status_code == 503


def test_the_consumer_health_check_asks_the_consumers_readiness_where_it_serves():
    consumer = SERVICES["consumer"]
    bind = consumer["environment"]["TRACKER_METRICS_BIND"]
    assert Settings.from_env({"TRACKER_METRICS_BIND": bind}).metrics_bind == bind
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[^']+)", " ".join(consumer["healthcheck"]["test"]))
    assert url is not None
    assert (url.group(1), url.group(2)) == (bind.rpartition(":")[2], "/readyz")


def test_the_dockerfile_copies_what_exists_and_runs_the_console_script():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tracker" in scripts
    assert any(line.startswith("CMD") and '"tracker"' in line for line in lines)


def test_prometheus_runs_only_in_the_monitoring_profile_with_files_that_exist():
    prometheus = SERVICES["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert all("profiles" not in spec for name, spec in SERVICES.items() if name != "prometheus")
    mounted = {}
    for volume in prometheus["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            assert (ROOT / source).is_file(), source
            mounted[target] = source
    config = yaml.safe_load((ROOT / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted, f"{rule_file} is not mounted beside the config"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_scrapes_the_compose_services():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.compose.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tracker-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert SERVICES["api"]["environment"]["TRACKER_BIND"].endswith(":8000")
    assert jobs["tracker-consumer"]["dns_sd_configs"][0]["names"] == ["consumer"]
