"""The cluster tests' fixture (tests/cluster.py) says plainly when it cannot run, configures its
nodes as a production cluster, and cuts one off with rules that touch nothing else."""

from __future__ import annotations

import socket

import pytest

from tests import cluster


def test_without_rabbitmq_server_the_fixture_fails_saying_so(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "_SCRIPT_DIRS", (tmp_path,))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(cluster.ClusterUnavailable, match="rabbitmq-server is not installed"):
        cluster.server_scripts()


def _bound_in(ports: range) -> socket.socket:
    """A socket holding a port of ``ports`` on 127.0.0.1."""
    for port in ports:
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", port))
        except OSError:
            held.close()
            continue
        return held
    raise AssertionError("no port free to hold")


def test_the_nodes_take_free_ports_below_the_ephemeral_range_never_the_machines_own_nodes(monkeypatch):
    # The kernel hands ports of 32768 and up to outgoing connections: a node's port there could be
    # taken between the probe and the node's start. Taken ports, the machine's node's and those
    # handed out already are passed over.
    monkeypatch.setattr(cluster, "_handed_out", set())
    with _bound_in(range(20_000, 21_000)) as taken:
        free = _bound_in(range(21_000, 22_000))
        chosen = free.getsockname()[1]
        free.close()
        offered = iter([25672, taken.getsockname()[1], chosen, chosen, 5672, chosen + 1])
        monkeypatch.setattr(cluster.random, "choice", lambda _ports: next(offered))
        assert cluster._free_port() == chosen  # noqa: SLF001
        assert cluster._free_port() == chosen + 1  # noqa: SLF001 - not the one handed out already
    assert max(cluster._PORTS) < 32768  # noqa: SLF001


def nodes(tmp_path, **options) -> list[cluster.Node]:
    """Three nodes' configuration (nothing started), each under a group of its own."""
    tmp_path.mkdir(exist_ok=True)
    made = [
        cluster.Node(f"n{n}@localhost", tmp_path / f"n{n}", tmp_path, cluster._Account(), **options)  # noqa: SLF001
        for n in (1, 2, 3)
    ]
    for n, node in enumerate(made, 1):
        node.group = 64000 + n  # as when run as root
    return made


def test_the_nodes_pause_a_minority_and_take_the_net_tick_they_are_given(tmp_path):
    nodes(tmp_path / "short", net_ticktime=8)
    config = (tmp_path / "short" / "n1" / "rabbitmq.conf").read_text()
    assert "cluster_partition_handling = pause_minority\n" in config
    assert "net_ticktime = 8\n" in config
    nodes(tmp_path / "plain")
    assert "net_ticktime" not in (tmp_path / "plain" / "n1" / "rabbitmq.conf").read_text()


def test_a_cut_drops_only_the_distribution_traffic_between_the_node_and_the_others(tmp_path):
    cut, *others = nodes(tmp_path)
    rules = cluster.partition_rules("t", cut, others, mark=0x7AC01234)
    theirs = f"{others[0].dist_port}, {others[1].dist_port}"
    assert rules.splitlines()[3:] == [
        # its connections to them, and theirs to it, whoever sends the packet: marked, then dropped
        f"    meta skgid {cut.group} tcp dport {{ {theirs} }} ct mark set 0x7ac01234",
        f"    meta skgid {cut.group} tcp sport {cut.dist_port} ct mark set 0x7ac01234",
        f"    meta skgid {{ {others[0].group}, {others[1].group} }} tcp dport {cut.dist_port} ct mark set 0x7ac01234",
        "    ct mark 0x7ac01234 drop",
        "  }",
        "}",
    ]
    cut.dist_port = 25672
    with pytest.raises(ValueError, match="machine's own node"):
        cluster.partition_rules("t", cut, others, mark=1)
