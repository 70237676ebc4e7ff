"""The cluster tests' fixture (tests/cluster.py) says plainly when it cannot run."""

from __future__ import annotations

import pytest

from tests import cluster


def test_without_rabbitmq_server_the_fixture_fails_saying_so(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "_SCRIPT_DIRS", (tmp_path,))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(cluster.ClusterUnavailable, match="rabbitmq-server is not installed"):
        cluster.server_scripts()


def test_the_nodes_never_take_the_ports_of_the_machines_own_node(monkeypatch):
    offered = iter([5672, 25672, 40001])
    monkeypatch.setattr(cluster, "free_port", lambda: next(offered))
    assert cluster._free_port() == 40001  # noqa: SLF001
