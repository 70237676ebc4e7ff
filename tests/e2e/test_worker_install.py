"""A worker's install: the library without the server extra, in a venv of its own, publishes events
that a real `tracker consume` folds into the row."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from bench.processes import environment
from tests.processes import ConsumerProcess
from tracker.store import open_job_store

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.timeout(300)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER_LIBRARIES = ["sqlalchemy", "alembic", "psycopg", "falcon", "gunicorn", "jwt", "argon2"]
INSTALL_TIMEOUT_S = 180

# Run by the worker venv's python: what the library loads, and which server libraries it can find.
PROBE = """
import importlib, json, sys
import tracker, tracker.publisher, tracker.client, tracker.cli
loaded = sorted(name for name in sys.modules if name.partition(".")[0] in sys.argv[1:])
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        missing.append(name)
print(json.dumps({"tracker": tracker.__file__, "loaded": loaded, "missing": missing}))
"""

# The README's worker, as the worker venv's python runs it.
WORKER = """
import sys
from tracker.publisher import Publisher

with Publisher.from_env() as publisher:
    with publisher.job(int(sys.argv[1])) as job:
        job.progress("Copying files.")
        job.final_message = "Deployed from a worker install."
"""


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The python of a fresh venv holding `pip install async-status-tracker` (no extras) of this tree.

    The tree is copied as the Dockerfile copies it and installed from the copy, not editable, so
    the venv sees only what the distribution ships, and the checkout gets no build output.
    """
    base = tmp_path_factory.mktemp("worker")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("tracker", "api", "consumers"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", base / "venv"], check=True, timeout=60)
    python = base / "venv" / "bin" / "python"
    # This interpreter's pip installs into the new venv (--python): no ensurepip, and its cache.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-input", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert install.returncode == 0, install.stdout[-5000:] + install.stderr[-5000:]
    return python


def worker_environment(settings) -> dict[str, str]:
    """The tracker's environment for the worker venv, without a path back into this checkout."""
    env = environment(settings)
    env.pop("PYTHONPATH", None)
    return env


def run_worker(python: pathlib.Path, args: list[str], env: dict[str, str], cwd: pathlib.Path):
    # cwd is not the checkout: `python -c` puts it first on sys.path.
    return subprocess.run([python, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_install_has_no_server_library_and_its_events_are_applied(
    worker_python: pathlib.Path, settings, engine, tmp_path
):
    env = worker_environment(settings)
    probe = run_worker(worker_python, ["-c", PROBE, *SERVER_LIBRARIES], env, tmp_path)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert pathlib.Path(found["tracker"]).is_relative_to(worker_python.parent.parent), found["tracker"]
    assert found["loaded"] == []
    assert found["missing"] == SERVER_LIBRARIES

    tracker = worker_python.with_name("tracker")
    refused = run_worker(tracker, ["api"], env, tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "tracker api needs the server extra: pip install 'async-status-tracker[server]'"
    ), refused.stderr

    jobs = open_job_store(engine)
    job_id = jobs.create_job("Deploying.").id
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        emitted = run_worker(
            tracker, ["jobs", "emit", str(job_id), "progress", "Started on the worker."], env, tmp_path
        )
        assert emitted.returncode == 0, emitted.stderr
        assert wait_for(jobs, job_id, lambda job: job.message == "Started on the worker.").status == "PENDING"

        published = run_worker(worker_python, ["-c", WORKER, str(job_id)], env, tmp_path)
        assert published.returncode == 0, published.stderr
        job = wait_for(jobs, job_id, lambda job: job.status != "PENDING")
        assert (job.status, job.message) == ("SUCCEEDED", "Deployed from a worker install.")
        assert job.end_time is not None
    finally:
        code, _ = consumer.terminate(timeout=15)
    assert code == 0, f"tracker consume exited with {code}:\n{consumer.tail()}"


def wait_for(jobs, job_id: int, done, timeout: float = 15.0):
    """The job's row once ``done(row)`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get_job(job_id)
        if done(job) or time.monotonic() > deadline:
            assert done(job), job
            return job
        time.sleep(0.05)
