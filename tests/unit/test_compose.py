"""compose.yaml and the Dockerfile, checked as far as this machine can (no Docker engine here)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import tomllib
import types
import unittest.mock
import urllib.parse

import falcon.testing
import pytest
import yaml

from api.app import Deps, create_app
from tracker import cli
from tracker.config import Settings
from tracker.readiness import NotReady

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
TRACKER_SERVICES = [name for name, spec in SERVICES.items() if spec.get("command", [""])[0] == "tracker"]
SETTINGS_ENV = {"TRACKER_" + field.name.upper() for field in dataclasses.fields(Settings)}
CLUSTER_NODES = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
CLUSTER_SERVICES = [*CLUSTER_NODES, "consumer-cluster"]
HA_DATABASES = ["postgres-primary", "postgres-standby"]
HA_TRACKERS = ["migrate-ha", "api-ha", "consumer-ha"]


def interpolated(value: str, **variables: str) -> str:
    """``value`` with compose's ``${NAME:?message}`` references replaced by ``variables``."""
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda found: variables[found.group(1)], value)


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
    assert sorted(TRACKER_SERVICES) == sorted(["api", "consumer", "consumer-cluster", "migrate", *HA_TRACKERS])
    for name in TRACKER_SERVICES:
        command = SERVICES[name]["command"]
        assert command[1] in subcommands, command
        cli._parser().parse_args(command[1:])  # noqa: SLF001 - its options too: argparse exits on one it does not know


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
    for secret in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "TRACKER_SECRET", "RABBITMQ_ERLANG_COOKIE"):
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
    with unittest.mock.patch("api.app.schema_problem", return_value=NotReady("database", "refused")):
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
    profiled = {name: spec["profiles"] for name, spec in SERVICES.items() if "profiles" in spec}
    assert profiled == {
        "prometheus": ["monitoring"],
        **{name: ["cluster"] for name in CLUSTER_SERVICES},
        **{name: ["ha"] for name in [*HA_DATABASES, *HA_TRACKERS]},
    }
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


def test_the_cluster_profile_runs_three_rabbitmq_nodes_that_form_one_cluster():
    assert all(SERVICES[name]["profiles"] == ["cluster"] for name in CLUSTER_SERVICES)
    cookies = {SERVICES[name]["environment"]["RABBITMQ_ERLANG_COOKIE"] for name in CLUSTER_NODES}
    assert len(cookies) == 1  # one cookie for all three, or they cannot talk
    for name in CLUSTER_NODES:
        node = SERVICES[name]
        assert node["hostname"] == name
        assert node["healthcheck"]["test"]
        mounts = dict(volume.split(":")[:2] for volume in node["volumes"])
        assert mounts["./deploy/rabbitmq/cluster.conf"] == "/etc/rabbitmq/conf.d/20-cluster.conf"
        assert f"{name}-data" in mounts  # a data volume of its own
    config = (ROOT / "deploy/rabbitmq/cluster.conf").read_text()
    assert "cluster_formation.peer_discovery_backend = classic_config" in config
    peers = set(re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", config, re.MULTILINE))
    assert peers == set(CLUSTER_NODES)


def test_the_cluster_consumers_are_given_all_three_nodes_and_wait_for_them():
    consumer = SERVICES["consumer-cluster"]
    assert consumer["command"] == SERVICES["consumer"]["command"]
    assert consumer["deploy"]["replicas"] == 2
    url = interpolated(consumer["environment"]["TRACKER_AMQP_URL"], RABBITMQ_PASSWORD="pw")
    settings = Settings.from_env({"TRACKER_AMQP_URL": url})
    assert [urllib.parse.urlsplit(one).netloc for one in settings.amqp_urls] == [
        f"tracker:pw@{node}:5672" for node in CLUSTER_NODES
    ]
    for node in CLUSTER_NODES:
        assert consumer["depends_on"][node]["condition"] == "service_healthy"
    assert consumer["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    single = SERVICES["consumer"]["environment"]
    assert {k: v for k, v in consumer["environment"].items() if k != "TRACKER_AMQP_URL"} == {
        k: v for k, v in single.items() if k != "TRACKER_AMQP_URL"
    }


def mounted_files(service: dict[str, object]) -> dict[str, pathlib.Path]:
    """A service's bind mounts of this repository's files: target → the file, which must exist."""
    found = {}
    for volume in service["volumes"]:  # type: ignore[attr-defined]
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            assert (ROOT / source).is_file(), source
            found[target] = ROOT / source
    return found


def test_the_ha_profile_runs_a_primary_and_a_synchronous_standby_made_from_it():
    primary, standby = (SERVICES[name] for name in HA_DATABASES)
    assert primary["image"] == standby["image"] == SERVICES["postgres"]["image"]
    for service, volume in ((primary, "postgres-primary-data"), (standby, "postgres-standby-data")):
        assert f"{volume}:/var/lib/postgresql/data" in service["volumes"]  # a data volume of its own
        assert volume in COMPOSE["volumes"]
        assert service["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # The primary: the image runs /docker-entrypoint-initdb.d/*.sh once, after initdb.
    [(target, init)] = mounted_files(primary).items()
    assert target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sh")
    script = init.read_text()
    assert "host replication ${POSTGRES_USER} all scram-sha-256" in script  # the standby may connect
    assert "ALTER SYSTEM SET synchronous_standby_names = '*'" in script  # commits wait for the standby
    assert os.access(init, os.X_OK)  # executed, not sourced into the image's entrypoint
    # The standby: its command is the script, run by the image's entrypoint, which copies the
    # primary it names with pg_basebackup -R, then hands over to the entrypoint.
    [(target, copy)] = mounted_files(standby).items()
    assert standby["command"] == ["bash", target]
    script = copy.read_text()
    assert standby["environment"]["PRIMARY_HOST"] == "postgres-primary"
    assert standby["environment"]["POSTGRES_USER"] == primary["environment"]["POSTGRES_USER"]
    assert standby["environment"]["PGPASSWORD"] == primary["environment"]["POSTGRES_PASSWORD"]
    assert "pg_basebackup" in script and "--write-recovery-conf" in script and '--host "${PRIMARY_HOST}"' in script
    # Promoted, it must not wait for a standby of its own: the command line empties the setting
    # it copied from the primary.
    assert script.rstrip().endswith(
        "exec docker-entrypoint.sh postgres -c hot_standby=on -c synchronous_standby_names="
    )
    assert standby["depends_on"]["postgres-primary"]["condition"] == "service_healthy"


def test_the_ha_trackers_are_given_both_hosts_and_find_the_primary_by_themselves():
    from sqlalchemy.engine import make_url

    from tracker.store import make_engine

    for name in HA_TRACKERS:
        url = interpolated(SERVICES[name]["environment"]["TRACKER_DATABASE_URL"], POSTGRES_PASSWORD="pw")
        engine = make_engine(Settings.from_env({"TRACKER_DATABASE_URL": url}).database_url)
        _args, params = engine.dialect.create_connect_args(make_url(url))
        assert (params["host"], params["port"]) == ("postgres-primary,postgres-standby", "5432,5432")
        assert (params["user"], params["password"], params["dbname"]) == ("tracker", "pw", "tracker")
        assert params["target_session_attrs"] == "read-write"
        engine.dispose()
    migrate = SERVICES["migrate-ha"]
    assert migrate["command"] == ["tracker", "migrate", "--wait", "60"]
    assert {name: spec["condition"] for name, spec in migrate["depends_on"].items()} == {
        name: "service_healthy" for name in HA_DATABASES
    }
    for name, single in (("api-ha", "api"), ("consumer-ha", "consumer")):
        service = SERVICES[name]
        assert service["command"] == SERVICES[single]["command"]
        assert service["healthcheck"] == SERVICES[single]["healthcheck"]
        assert service["depends_on"]["migrate-ha"]["condition"] == "service_completed_successfully"
        others = {k: v for k, v in service["environment"].items() if k != "TRACKER_DATABASE_URL"}
        assert others == {k: v for k, v in SERVICES[single]["environment"].items() if k != "TRACKER_DATABASE_URL"}
    assert SERVICES["consumer-ha"]["deploy"]["replicas"] == 2
    assert SERVICES["consumer-ha"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
