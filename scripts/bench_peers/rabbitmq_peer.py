"""RabbitMQ as a benchmark peer: a three-node cluster on this host with one quorum queue.

Debian's `rabbitmq-server` (installed with apt-get when missing; its init script is kept from
starting by policy-rc.d) runs three nodes `benchN@localhost`, each with its own AMQP port, Erlang
distribution port, data (mnesia, quorum logs) and log directory under one temporary directory,
listeners and distribution bound to 127.0.0.1, and a private `epmd` on its own port, started
here. Nodes 2 and 3 join node 1; every workload declares a durable queue with
`x-queue-type: quorum` (three members) and publishes persistent messages with publisher confirms
(pika, installed into the venv at run time; callback-driven `SelectConnection`s sharing one
I/O loop, so that the Python client costs as little CPU as it can). Everything started here is stopped by pid and
the directory removed in `stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_peers.common import (
    RssSampler,
    Unavailable,
    body,
    ensure_packages,
    latency_figures,
    pick_base_port,
    random_body,
    wait_port,
)
from bench_peers.raftq_peer import failover_figures

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
ACK_EVERY = 50
"""A consumer acks with `multiple=True` every this many messages."""


def install() -> str:
    """Install Debian's rabbitmq-server when missing. Returns what was done.

    Raises:
        Unavailable: apt-get failed (the message has its last line).
    """
    if SERVER.exists() and CTL.exists():
        return "already installed"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():  # keep the package's init script from starting a default node
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        for cmd in (["apt-get", "install", "-y", "-q", "rabbitmq-server"],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "rabbitmq-server"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode == 0 and cmd[1] == "install":
                return "installed with apt-get"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
        raise Unavailable(f"apt-get install rabbitmq-server failed: {tail[0]}")
    except FileNotFoundError as exc:
        raise Unavailable(f"cannot install rabbitmq-server: {exc}") from None
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


class RabbitSystem:
    """A local three-node RabbitMQ cluster with quorum queues, under benchmark."""

    name = "rabbitmq"

    def __init__(self, nodes: int = 3, keep_data: bool = False) -> None:
        self.nodes = nodes
        self.keep_data = keep_data
        self.dir: Path | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.base = 0
        self._queue_no = 0
        self.installed = ""

    # -- lifecycle ------------------------------------------------------------------------

    def amqp_port(self, i: int) -> int:
        return self.base + i

    def node_name(self, i: int) -> str:
        return f"bench{i}@localhost"

    def _env(self, i: int | None = None) -> dict[str, str]:
        assert self.dir is not None
        env = {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "ERL_EPMD_PORT": str(self.base),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        if i is not None:
            nd = self.dir / f"n{i}"
            env.update({
                "RABBITMQ_NODENAME": self.node_name(i),
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.amqp_port(i)),
                "RABBITMQ_DIST_PORT": str(self.base + 10 + i),
                "RABBITMQ_MNESIA_BASE": str(nd / "mnesia"),
                "RABBITMQ_LOG_BASE": str(nd / "log"),
                "RABBITMQ_CONFIG_FILE": str(nd / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(nd / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(nd / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(nd / "pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                    "-kernel inet_dist_use_interface {127,0,0,1}",
                "RUNNING_UNDER_SYSTEMD": "1",  # exec erl: the pid we hold is the VM's
            })
        return env

    def ctl(self, i: int, *args: str, timeout_s: float = 120.0) -> str:
        """Run `rabbitmqctl -n benchI@localhost ARGS` against our node; returns its stdout.

        Raises:
            RuntimeError: it failed.
        """
        proc = subprocess.run(
            [str(CTL), "-n", self.node_name(i), *args], env=self._env(), capture_output=True,
            text=True, timeout=timeout_s, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def start(self) -> None:
        """Install if needed, start epmd and three nodes, cluster them.

        Raises:
            Unavailable: RabbitMQ cannot be installed.
            RuntimeError: a node did not come up or join.
        """
        self.installed = install()
        ensure_packages({"pika": "pika"})
        self.dir = Path(tempfile.mkdtemp(prefix="rabbit-bench-"))
        self.base = pick_base_port([0, *range(1, self.nodes + 1),
                                    *range(11, 11 + self.nodes)])
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.base), "-address", "127.0.0.1"],
            env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        if not wait_port(self.base, 10):
            raise RuntimeError("epmd did not start")
        for i in range(1, self.nodes + 1):
            nd = self.dir / f"n{i}"
            (nd / "log").mkdir(parents=True)
            (nd / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{self.amqp_port(i)}\n"
                "log.console = false\nlog.file.level = warning\n"
                "disk_free_limit.absolute = 200MB\n"
            )
            (nd / "advanced.config").write_text("[].\n")
            (nd / "enabled_plugins").write_text("[].\n")
            log = open(nd / "log" / "stdout.log", "wb")  # noqa: SIM115 - closed with the node
            self.procs[i] = subprocess.Popen(
                [str(SERVER)], env=self._env(i), cwd=nd, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
        for i in range(1, self.nodes + 1):
            if not wait_port(self.amqp_port(i), 120):
                raise RuntimeError(f"RabbitMQ node {i} did not open its port (log in {self.dir})")
            self.ctl(i, "await_startup")
        for i in range(2, self.nodes + 1):
            self.ctl(i, "stop_app")
            self.ctl(i, "join_cluster", self.node_name(1))
            self.ctl(i, "start_app")
        for i in range(1, self.nodes + 1):
            if not wait_port(self.amqp_port(i), 60):
                raise RuntimeError(f"RabbitMQ node {i} did not come back after joining")
        status = self.ctl(1, "cluster_status")
        missing = [self.node_name(i) for i in range(1, self.nodes + 1)
                   if self.node_name(i) not in status]
        if missing:
            raise RuntimeError(f"nodes not in the cluster: {missing}")

    def stop(self) -> None:
        """SIGTERM every node we started (by pid), then SIGKILL; stop epmd; remove the data."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.epmd is not None:
            if self.epmd.poll() is None:
                self.epmd.terminate()
                try:
                    self.epmd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.epmd.kill()
                    self.epmd.wait()
            self.epmd = None
        if self.dir is not None and not self.keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def describe(self) -> str:
        ports = ", ".join(str(self.amqp_port(i)) for i in self.procs)
        return (f"RabbitMQ {self.version()} ({self.installed}), {self.nodes} nodes, AMQP on "
                f"127.0.0.1:{ports}, epmd on {self.base}, data in {self.dir}")

    def version(self) -> str:
        try:
            out = self.ctl(1, "version", timeout_s=30).strip()
        except (RuntimeError, subprocess.TimeoutExpired):
            return "?"
        return out.splitlines()[-1] if out else "?"

    def node_pids(self) -> dict[str, int]:
        return {f"n{i}": p.pid for i, p in self.procs.items() if p.poll() is None}

    def leader_pid(self) -> int:
        return self.procs[1].pid

    def url(self, i: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port(i)}/"

    def live_nodes(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def queue_leader(self, queue: str) -> int:
        """The node number holding the quorum queue's leader (from rabbitmqctl)."""
        i = self.live_nodes()[0]
        out = self.ctl(i, "list_queues", "name", "leader", "--no-table-headers", "--quiet")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == queue:
                return int(parts[1].split("@")[0].removeprefix("bench"))
        raise RuntimeError(f"queue {queue} not listed: {out[-200:]}")

    # -- helpers --------------------------------------------------------------------------

    def _params(self, i: int) -> Any:
        import pika

        return pika.ConnectionParameters(
            "127.0.0.1", self.amqp_port(i), credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=5, blocked_connection_timeout=60,
        )

    def _declare(self, label: str) -> str:
        import pika

        self._queue_no += 1
        name = f"bench-{label}-{self._queue_no}"
        with pika.BlockingConnection(self._params(1)) as conn:
            conn.channel().queue_declare(name, durable=True, arguments={
                "x-queue-type": "quorum", "x-quorum-initial-group-size": self.nodes})
        return name

    def _delete(self, name: str) -> None:
        import pika

        for i in self.live_nodes():
            try:
                with pika.BlockingConnection(self._params(i)) as conn:
                    conn.channel().queue_delete(name)
                return
            except Exception:  # noqa: BLE001, S112 - try the next node
                continue

    # -- workloads ------------------------------------------------------------------------

    def one_at_a_time(self, seconds: float) -> dict[str, Any]:
        """Workload 1: one connection, publish one persistent message and wait for its confirm."""
        import pika

        q = self._declare("w1")
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        payload = body(0)
        with pika.BlockingConnection(self._params(1)) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            for _ in range(20):
                ch.basic_publish("", q, payload, props, mandatory=False)
            lat: list[float] = []
            start = time.perf_counter()
            deadline = start + seconds
            while (t0 := time.perf_counter()) < deadline:
                ch.basic_publish("", q, payload, props)
                lat.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
        self._delete(q)
        return {"rate_per_s": len(lat) / elapsed, "n": len(lat), **latency_figures(lat)}

    def in_flight(
        self, in_flight: int, seconds: float, producers: int = 16,
        kill_leader_at_s: float | None = None,
    ) -> dict[str, Any]:
        """Workload 2 (and 5): `producers` connections (spread over the nodes) keeping
        `in_flight` publishes awaiting confirms in all; with `kill_leader_at_s`, SIGKILL the
        node holding the queue's leader then (a producer that loses its connection reconnects
        to the next node; its unconfirmed publishes are not counted)."""
        q = self._declare("w2" if kill_leader_at_s is None else "w5")
        leader = self.queue_leader(q) if kill_leader_at_s is not None else None
        run = _Publishers(self, q, in_flight, producers, seconds=seconds)
        if kill_leader_at_s is not None:
            assert leader is not None
            run.kill = (kill_leader_at_s, leader)
        run.run()
        self._delete(q)
        if leader is not None and run.kill_at is not None:
            self.procs[leader].wait()
        lat = [d - s for s, d in zip(run.starts, run.dones, strict=True)]
        out: dict[str, Any] = {"rate_per_s": len(run.dones) / (run.end - run.start),
                               "n": len(run.dones), "errors": run.errors, **latency_figures(lat)}
        if run.kill_at is not None:
            out.update(failover_figures(run.starts, run.dones, run.kill_at, run.start, run.end))
            out["killed_node"] = leader
        return out

    def _drain(self, q: str, n: int, consumers: int, prefetch: int = 250) -> float:
        """Consume and ack `n` messages with `consumers` connections to node 1 (prefetch
        `prefetch` each, ack with multiple=True every 50); returns messages/s."""
        import pika
        from pika.adapters.select_connection import IOLoop

        loop = IOLoop()
        got = 0
        conns: list[Any] = []
        start = time.monotonic()

        def on_open(conn: Any) -> None:
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch: Any) -> None:
            state = {"unacked": 0}

            def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
                nonlocal got
                got += 1
                state["unacked"] += 1
                if state["unacked"] >= ACK_EVERY or got >= n:
                    state["unacked"] = 0
                    ch.basic_ack(method.delivery_tag, multiple=True)
                if got >= n:
                    loop.add_callback_threadsafe(stop_all)

            ch.basic_qos(prefetch_count=prefetch)
            ch.basic_consume(q, on_message)

        def stop_all() -> None:
            for c in conns:
                if c.is_open:
                    c.close()
            loop.call_later(0.2, loop.stop)

        for _ in range(consumers):
            conns.append(pika.SelectConnection(self._params(1), on_open_callback=on_open,
                                               custom_ioloop=loop))
        loop.start()
        return got / (time.monotonic() - start)

    def drain(self, backlog: int, consumers: int = 4) -> dict[str, Any]:
        """Workload 3: publish `backlog` messages (1,000 awaiting confirms), then consume and
        ack them (4 consumers, prefetch 250 each, ack with multiple=True every 50)."""
        q = self._declare("w3")
        fill = _Publishers(self, q, 1000, 4, total=backlog)
        fill.run()
        rate = self._drain(q, backlog, consumers)
        self._delete(q)
        return {"rate_per_s": rate, "fill_rate_per_s": backlog / (fill.end - fill.start),
                "n": backlog}

    def backlog(
        self, n: int, in_flight: int = 1000, producers: int = 16, consumers: int = 4,
        random_bodies: bool = False,
    ) -> dict[str, Any]:
        """Workload 4: publish `n` (16 connections, 1,000 awaiting confirms), then drain.
        `random_bodies`: every body random bytes of its own. Returns what raftq's does."""
        q = self._declare("w4")
        with RssSampler(self.node_pids()) as rss:
            pub = _Publishers(self, q, in_flight, producers, total=n,
                              random_bodies=random_bodies)
            pub.run()
            enqueue_rate = pub.confirmed / (pub.end - pub.start)
            time.sleep(2.0)
            at_depth = rss.current_mib()
            drain_rate = self._drain(q, pub.confirmed, consumers)
        self._delete(q)
        peak = rss.peak_mib()
        return {"enqueue_rate_per_s": enqueue_rate, "drain_rate_per_s": drain_rate, "n": n,
                "rss_mib": peak, "rss_peak_mib": max(peak.values()),
                "rss_at_depth_mib": at_depth}


class _Publishers:
    """Producers on pika `SelectConnection`s sharing one I/O loop, each keeping a window of
    publishes awaiting confirms (confirms may be `multiple`).

    Runs for `seconds`, or until `total` messages are confirmed. Records the start and confirm
    time of every confirmed publish. With `kill` = (after_s, node), SIGKILLs that node then.
    """

    def __init__(self, system: RabbitSystem, queue: str, in_flight: int, producers: int,
                 *, seconds: float | None = None, total: int | None = None,
                 random_bodies: bool = False) -> None:
        self.system = system
        self.random_bodies = random_bodies
        self.queue = queue
        self.windows = [in_flight // producers + (1 if p < in_flight % producers else 0)
                        for p in range(producers)]
        self.seconds = seconds
        self.total = total
        self.kill: tuple[float, int] | None = None
        self.kill_at: float | None = None
        self.starts: list[float] = []
        self.dones: list[float] = []
        self.confirmed = 0
        self.published = 0
        self.errors = 0
        self.start = self.end = 0.0

    def run(self) -> None:
        import pika
        from pika.adapters.select_connection import IOLoop

        loop = IOLoop()
        payload = body(0)
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        system = self.system
        nodes = system.nodes
        self.start = time.monotonic()
        deadline = self.start + self.seconds if self.seconds is not None else float("inf")
        live = {"n": 0}

        def finished() -> bool:
            if time.monotonic() >= deadline:
                return True
            return self.total is not None and self.published >= self.total

        def open_producer(p: int, node: int) -> None:
            if finished():
                return
            state: dict[str, Any] = {"pending": {}, "tag": 0, "ch": None}

            def on_open(conn: Any) -> None:
                conn.channel(on_open_callback=on_channel)

            def on_channel(ch: Any) -> None:
                state["ch"] = ch
                ch.confirm_delivery(on_confirm)
                fill()

            def fill() -> None:
                ch = state["ch"]
                pending = state["pending"]
                while len(pending) < self.windows[p] and not finished():
                    if not ch.is_open:
                        return
                    state["tag"] += 1
                    self.published += 1
                    pending[state["tag"]] = time.monotonic()
                    ch.basic_publish("", self.queue,
                                     random_body() if self.random_bodies else payload, props)
                if finished() and not pending and conn.is_open:
                    conn.close()

            def on_confirm(frame: Any) -> None:
                method = frame.method
                tag = method.delivery_tag
                ok = isinstance(method, pika.spec.Basic.Ack)
                pending = state["pending"]  # tag -> start time, tags increasing
                now = time.monotonic()
                if method.multiple:
                    while pending:
                        first = next(iter(pending))
                        if first > tag:
                            break
                        started = pending.pop(first)
                        if ok:
                            self._confirm(started, now)
                else:
                    started = pending.pop(tag, None)
                    if ok and started is not None:
                        self._confirm(started, now)
                if not ok:
                    self.errors += 1
                fill()

            def on_close(_conn: Any, _reason: Exception) -> None:
                live["n"] -= 1
                if not finished():  # lost: reconnect to the next node
                    self.errors += 1
                    self.published -= len(state["pending"])
                    loop.call_later(0.05, lambda: open_producer(p, node % nodes + 1))
                elif live["n"] == 0:
                    loop.stop()

            def on_open_error(_conn: Any, _err: Exception) -> None:
                live["n"] -= 1
                self.errors += 1
                loop.call_later(0.05, lambda: open_producer(p, node % nodes + 1))

            live["n"] += 1
            conn = pika.SelectConnection(
                system._params(node), on_open_callback=on_open, on_close_callback=on_close,
                on_open_error_callback=on_open_error, custom_ioloop=loop)

        def do_kill() -> None:
            assert self.kill is not None
            self.kill_at = time.monotonic()
            system.procs[self.kill[1]].send_signal(signal.SIGKILL)

        def watchdog() -> None:
            if finished() and (live["n"] == 0 or time.monotonic() > deadline + 15):
                loop.stop()  # all closed, or confirms that will never come: give up on them
                return
            loop.call_later(0.1, watchdog)

        for p in range(len(self.windows)):
            open_producer(p, p % nodes + 1)
        if self.kill is not None:
            loop.call_later(self.kill[0], do_kill)
        loop.call_later(0.1, watchdog)
        loop.start()
        self.end = time.monotonic()

    def _confirm(self, started: float, now: float) -> None:
        self.confirmed += 1
        self.starts.append(started)
        self.dones.append(now)
