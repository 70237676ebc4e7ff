"""RabbitMQ nodes of the tests' own on this machine, joined in one cluster: three for the cluster
tests (SPEC §10), one for the broker restart (a test never stops the machine's own node).

The nodes are the test run's own: names ``tracker-<run>-c1@localhost`` …, AMQP and distribution
ports that were free, configuration, data and logs in a temporary directory. They are started
in parallel, joined with ``rabbitmqctl join_cluster``, and removed afterwards (killed, their
directory deleted) however the tests ended. Nothing here addresses the machine's own broker: every
command names one of these nodes with ``-n``, and each node reads its own configuration files,
not /etc/rabbitmq's (which pin port 5672).

Run as root, the nodes run as the ``rabbitmq`` user with its home, so they share the machine's
Erlang cookie (/var/lib/rabbitmq/.erlang.cookie); run as anyone else, as that user with theirs.

Their configuration is a production cluster's where it matters: ``cluster_partition_handling =
pause_minority``. ``running_cluster(net_ticktime=…)`` shortens the time a node takes to see
another gone, for a test that cuts one off (``Cluster.partitioned``: as root, with nftables,
each node running under a group of its own so that the rules can tell its packets apart).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence

from tests.accounts import ServiceAccount
from tests.faults import rabbitmq

# Debian's /usr/sbin/rabbitmq-server is a wrapper that redirects the output and switches user
# with su; the scripts it wraps take the environment as it is given.
_SCRIPT_DIRS = (pathlib.Path("/usr/lib/rabbitmq/bin"), pathlib.Path("/usr/lib/rabbitmq/sbin"))
_CTL_TIMEOUT_S = 120.0
_BOOT_TIMEOUT_S = 180.0
_MACHINE_NODE_PORTS = frozenset({5672, 25672, 15672, 15692, 4369})

# As root, node n runs under group _GROUP_BASE + n (the rabbitmq user, so its Erlang cookie, all
# the same): what nftables' ``meta skgid`` tells the nodes' packets apart by (``partitioned``).
# No group of that number need exist, and a process of the machine's that has one sends nothing
# to the nodes' distribution ports, which every rule names too.
_GROUP_BASE = 64000
_NFT_TABLE_PREFIX = "tracker_cut_"
_MARK_BASE = 0x7AC0_0000  # conntrack marks of the cuts' connections: this, and 16 bits of the run's own


# The nodes' ports are taken below the kernel's ephemeral range (32768 and up here): a port the
# kernel hands out for :0 is free only until it is handed out again, as the source port of any
# outgoing connection, which happened between the probe and the node's start ("eaddrinuse").
_PORTS = range(20_000, 32_000)
_handed_out: set[int] = set()


def _free_port() -> int:
    """A free port of 127.0.0.1 below the ephemeral range, not handed out before by this process,
    never one of the machine's own node (taken anyway while it runs)."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _MACHINE_NODE_PORTS or port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ClusterUnavailable(f"no free port of 127.0.0.1 in {_PORTS.start}-{_PORTS.stop - 1}")


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be started here (no rabbitmq-server, or a node would not come up)."""


def server_scripts() -> pathlib.Path:
    """The directory holding rabbitmq-server and rabbitmqctl; raises ClusterUnavailable without them."""
    for folder in _SCRIPT_DIRS:
        if (folder / "rabbitmq-server").is_file() and (folder / "rabbitmqctl").is_file():
            return folder
    found = shutil.which("rabbitmq-server")
    if found and shutil.which("rabbitmqctl"):
        return pathlib.Path(found).resolve().parent
    raise ClusterUnavailable(
        "rabbitmq-server is not installed (not in /usr/lib/rabbitmq/bin, not on PATH): the tests "
        "that restart or kill RabbitMQ start nodes of their own on this machine; install it with "
        "apt-get install rabbitmq-server"
    )


class _Account(ServiceAccount):
    """Whom the nodes and their commands run as, and the home whose Erlang cookie they share."""

    def __init__(self) -> None:
        try:
            super().__init__("rabbitmq")
        except LookupError as exc:
            raise ClusterUnavailable(str(exc)) from None


class Node:
    """One RabbitMQ node: its process (started again after it is killed or stopped) and its commands."""

    def __init__(
        self,
        name: str,
        home: pathlib.Path,
        scripts: pathlib.Path,
        account: _Account,
        *,
        group: int | None = None,
        net_ticktime: int | None = None,
    ) -> None:
        """``group``: the group the node's process runs under (as root only); ``net_ticktime``: the
        Erlang distribution's (None: Erlang's 60 s), which bounds how long it takes to see a peer gone."""
        self.name = name
        self.amqp_port = _free_port()
        self.dist_port = _free_port()
        self.group = group if account.uid is not None else None
        self._home = home
        self._scripts = scripts
        self._account = account
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        home.mkdir()
        account.own(home)
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            # a node with little free disk on a test machine still takes messages
            "disk_free_limit.absolute = 10MB\n"
            # as a production cluster: a node cut off from the majority stops serving until it is back
            "cluster_partition_handling = pause_minority\n"
            + (f"net_ticktime = {net_ticktime}\n" if net_ticktime is not None else "")
        )
        (home / "enabled_plugins").write_text("[].\n")  # no management or prometheus ports to clash
        (home / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf (its NODENAME)
        for sub in ("mnesia", "log"):
            (home / sub).mkdir()
            account.own(home / sub)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def log_path(self) -> pathlib.Path:
        return self._home / "log" / f"{self.name}.log"

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=self._account.home,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_CONF_ENV_FILE=str(self._home / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self._home / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self._home / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self._home / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self._home / "mnesia"),
            RABBITMQ_LOG_BASE=str(self._home / "log"),
            RABBITMQ_PID_FILE=str(self._home / "beam.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            # the distribution listens on loopback only, as the machine's own node does
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self) -> None:
        """Start the node's process (returns at once; ``wait_answering`` waits for it)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with contextlib.suppress(FileNotFoundError):
            (self._home / "beam.pid").unlink()
        with (self._home / "console.log").open("ab") as console:
            self._process = subprocess.Popen(
                [str(self._scripts / "rabbitmq-server")],
                env=self.environment(),
                cwd=self._home,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,
                **self._account.popen_args(self.group),  # type: ignore[arg-type]
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def beam_pid(self, timeout: float = 30.0) -> int:
        """The operating system's pid of the node's Erlang VM (beam.smp), from its pid file."""
        deadline = time.monotonic() + timeout
        path = self._home / "beam.pid"
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(path.read_text().strip())
            time.sleep(0.1)
        raise ClusterUnavailable(f"{self.name} wrote no pid file within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the Erlang VM: no goodbye to clients or to the other nodes."""
        pid = self.beam_pid()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``), and wait for its process to end."""
        self.ctl("stop")
        self._reap()

    def remove(self) -> None:
        """Kill whatever of the node is left; nothing if it is not running."""
        if self._process is None:
            return
        with contextlib.suppress(ClusterUnavailable, ProcessLookupError):
            if self.running:
                os.kill(self.beam_pid(timeout=1), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._reap()

    def _reap(self, timeout: float = 60.0) -> None:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)

    def answering(self) -> bool:
        """Whether the node takes an AMQP connection and opens a channel right now."""
        return rabbitmq.answering(self.url)

    def wait_answering(self, timeout: float = _BOOT_TIMEOUT_S) -> float:
        """Block until the node answers on its AMQP port; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.answering():
                return time.monotonic() - started
            if self._process is not None and not self.running:
                raise ClusterUnavailable(f"{self.name} exited with {self._process.returncode}:\n{self.tail()}")
            time.sleep(0.25)
        raise ClusterUnavailable(f"{self.name} did not answer on port {self.amqp_port} within {timeout} s")

    def ctl(self, *args: str, tool: str = "rabbitmqctl", check: bool = True) -> str:
        """``rabbitmqctl -n NODE ARGS…`` (or another of the server's tools); its standard output."""
        done = subprocess.run(
            [str(self._scripts / tool), "-n", self.name, *args],
            env=self.environment(),
            cwd=self._home,
            capture_output=True,
            text=True,
            timeout=_CTL_TIMEOUT_S,
            check=False,
            **self._account.popen_args(),  # type: ignore[arg-type]
        )
        if check and done.returncode != 0:
            raise ClusterUnavailable(
                f"{tool} -n {self.name} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def ctl_json(self, *args: str) -> list[dict[str, object]]:
        return json.loads(self.ctl(*args, "-q", "--formatter", "json") or "[]")

    def tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self._home / "console.log", self.log_path):
            if path.exists():
                texts.append(
                    f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(texts)


class Cluster:
    """Nodes joined in one cluster (or a single node); ``url`` lists them all, as TRACKER_AMQP_URL would."""

    def __init__(self, nodes: Sequence[Node], home: pathlib.Path) -> None:
        self.nodes = list(nodes)
        self._home = home
        self.cut_off: set[str] = set()  # names of the nodes ``partitioned`` holds apart now

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def any_running(self, but: Node | None = None) -> Node:
        """A node whose process runs, for commands: never one cut off (it could not answer)."""
        return next(node for node in self.nodes if node is not but and node.running and node.name not in self.cut_off)

    def queue_info(self, queue: str, asked: Node | None = None) -> dict[str, object]:
        """``name``, ``type``, ``leader`` and ``members`` of ``queue``, asked of a running node."""
        entry = self._listed(queue, asked or self.any_running())
        if entry is None:
            raise AssertionError(f"no queue {queue} on the cluster")
        return entry

    def leader_now(self, queue: str) -> str:
        """The name of the node leading quorum queue ``queue`` now; "" while none does, and while
        the node asked leaves the queue out of its list (it did just after its leader was killed)."""
        entry = self._listed(queue, self.any_running())
        return "" if entry is None else str(entry["leader"] or "")

    def _listed(self, queue: str, node: Node) -> dict[str, object] | None:
        """``queue``'s entry in ``node``'s list of queues, None when it leaves the queue out."""
        entries = node.ctl_json("list_queues", "name", "type", "leader", "members")
        return next((entry for entry in entries if entry["name"] == queue), None)

    def leader(self, queue: str) -> Node:
        """The node leading quorum queue ``queue`` now."""
        return self.node(str(self.queue_info(queue)["leader"]))

    def members(self, queue: str) -> list[str]:
        members = self.queue_info(queue)["members"]
        assert isinstance(members, list)
        return sorted(str(member) for member in members)

    def clients(self, node: Node) -> collections.Counter[str]:
        """The AMQP connections ``node`` serves now, counted by the name each client gave itself."""
        names: collections.Counter[str] = collections.Counter()
        for entry in self.any_running().ctl_json("list_connections", "name", "client_properties"):
            # The connection's name is "client address -> server address": the server port says the node.
            if str(entry["name"]).endswith(f"-> 127.0.0.1:{node.amqp_port}"):
                given = [p[2] for p in entry["client_properties"] if p[0] == "connection_name"]  # type: ignore[union-attr]
                names[str(given[0]) if given else "?"] += 1
        return names

    def unacked_count(self, queue: str) -> int:
        """Messages of ``queue`` delivered to consumers and not yet acked, on every node's channels."""
        return rabbitmq.unacked_count(queue, self.any_running().ctl_json)

    def running_nodes(self) -> list[str]:
        """The nodes the cluster itself counts as running, asked of a running node."""
        status = json.loads(self.any_running().ctl("cluster_status", "-q", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def wait_quorum_safe(self, node: Node, timeout: float = 120.0) -> None:
        """Block until stopping ``node`` leaves every quorum queue with a majority of members in step."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                node.ctl("check_if_node_is_quorum_critical", tool="rabbitmq-queues")
                return
            except ClusterUnavailable as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} still quorum critical after {timeout} s: {exc}") from None
            time.sleep(1)

    @contextlib.contextmanager
    def partitioned(self, node: Node) -> Iterator[None]:
        """Cut ``node`` off from the other nodes while the block runs, itself still running; the
        rules are removed afterwards, however the block ends.

        Its Erlang distribution traffic is dropped on loopback, both ways, by an nftables table of
        the run's own (``nft``, as root; ``partition_rules``): every connection between it and the
        others, whoever opened it, and every one either tries to open. Nothing else is touched:
        every rule names both a node's group and a distribution port of these nodes (never the
        machine's own node's ports), and a table left by a test run that was killed is removed by
        the next.
        """
        problem = partition_problem()
        if problem is not None:
            raise ClusterUnavailable(problem)
        others = [other for other in self.nodes if other is not node]
        if node.group is None or any(other.group is None for other in others):
            raise ClusterUnavailable("the nodes were not started under groups of their own (as root)")
        _remove_stale_tables()
        run = uuid.uuid4().hex[:6]
        table = f"{_NFT_TABLE_PREFIX}{os.getpid()}_{run}"
        _nft("-f", "-", stdin=partition_rules(table, node, others, mark=_MARK_BASE | int(run[:4], 16)))
        self.cut_off.add(node.name)
        try:
            yield
        finally:
            self.cut_off.discard(node.name)
            _nft("delete", "table", "inet", table)

    def remove(self) -> None:
        """Kill every node and delete their directory."""
        for node in self.nodes:
            node.remove()
        shutil.rmtree(self._home, ignore_errors=True)


def partition_rules(table: str, node: Node, others: Sequence[Node], mark: int) -> str:
    """The nftables table (``nft -f`` text) that cuts ``node`` off from ``others``; see ``Cluster.partitioned``.

    A connection between them is marked (``ct mark``, conntrack) by the first packet seen that
    says so: one ``node`` sends to their distribution ports or from its own, or one they send to
    its port; then every packet of it is dropped, either way, as a cut cable would.
    """
    ports = {node.dist_port, *(other.dist_port for other in others)}
    if ports & _MACHINE_NODE_PORTS:
        raise ValueError(f"a rule would name a port of the machine's own node: {sorted(ports & _MACHINE_NODE_PORTS)}")
    theirs_ports = ", ".join(str(other.dist_port) for other in others)
    theirs_groups = ", ".join(str(other.group) for other in others)
    return (
        f"table inet {table} {{\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    meta skgid {node.group} tcp dport {{ {theirs_ports} }} ct mark set {mark:#x}\n"
        f"    meta skgid {node.group} tcp sport {node.dist_port} ct mark set {mark:#x}\n"
        f"    meta skgid {{ {theirs_groups} }} tcp dport {node.dist_port} ct mark set {mark:#x}\n"
        f"    ct mark {mark:#x} drop\n"
        "  }\n"
        "}\n"
    )


def partition_problem() -> str | None:
    """Why ``Cluster.partitioned`` cannot cut a node off here, if it cannot."""
    if os.geteuid() != 0:
        return "cutting a node off takes nftables rules, which only root may add: run the test as root"
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables): cutting a node off takes nftables rules"
    try:
        _nft("list", "tables")
    except ClusterUnavailable as exc:
        return f"nftables does not work here: {exc}"
    return None


def _nft(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ClusterUnavailable(f"nft {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _remove_stale_tables() -> None:
    """Delete the tables of test runs that are gone (killed before they could remove theirs)."""
    for line in _nft("list", "tables").splitlines():
        family, _, name = line.removeprefix("table ").partition(" ")
        if not name.startswith(_NFT_TABLE_PREFIX):
            continue
        pid = int(name.removeprefix(_NFT_TABLE_PREFIX).partition("_")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _nft("delete", "table", family, name)
        except PermissionError:
            pass  # alive, someone else's


@contextlib.contextmanager
def running_cluster(size: int = 3, *, net_ticktime: int | None = None) -> Iterator[Cluster]:
    """``size`` nodes started in parallel and joined to the first; all removed on leaving, however."""
    scripts = server_scripts()
    account = _Account()
    run = uuid.uuid4().hex[:6]
    home = pathlib.Path(tempfile.mkdtemp(prefix=f"tracker-cluster-{run}-"))
    account.own(home)
    cluster = Cluster(
        [
            Node(
                f"tracker-{run}-c{n}@localhost",
                home / f"c{n}",
                scripts,
                account,
                group=_GROUP_BASE + n,
                net_ticktime=net_ticktime,
            )
            for n in range(1, size + 1)
        ],
        home,
    )
    try:
        for node in cluster.nodes:
            node.start()
        with concurrent.futures.ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda node: node.wait_answering(), cluster.nodes))
        first, *others = cluster.nodes
        for node in others:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            node.wait_answering()
        names = sorted(node.name for node in cluster.nodes)
        if cluster.running_nodes() != names:
            raise ClusterUnavailable(f"the nodes did not form one cluster: {cluster.running_nodes()} of {names}")
        yield cluster
    except ClusterUnavailable as exc:
        logs = "\n".join(node.tail() for node in cluster.nodes)
        raise ClusterUnavailable(f"{exc}\n{logs}") from None
    finally:
        cluster.remove()
