"""The raftq CLI (click's CliRunner) against the fake cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result

from cluster.cli import cli
from node.config import ClusterConfig, NodeConfig, write
from tests.client.fake import FakeCluster


async def run(args: list[str], *, input: str | bytes | None = None,
              env: dict[str, Any] | None = None) -> Result:
    """Invoke the CLI in a worker thread (it blocks; the fake serves on this trio loop)."""
    runner = CliRunner()
    env = {"RAFTQ_SERVERS": None, **(env or {})}
    return await trio.to_thread.run_sync(
        lambda: runner.invoke(cli, args, input=input, env=env, catch_exceptions=False)
    )


def servers(fake: FakeCluster) -> list[str]:
    return ["--servers", ",".join(fake.addrs), "--timeout", "5"]


async def test_queue_send_receive_json(fake: FakeCluster) -> None:
    s = servers(fake)
    r = await run([*s, "queue", "create", "jobs", "--visibility-timeout-ms", "5000", "--no-dlq"])
    assert r.exit_code == 0 and r.stdout == "created queue jobs\n"
    assert fake.ops_at("create_queue", 1)[0]["options"] == {
        "visibility_timeout_ms": 5000, "dead_letter_queue": None}
    r = await run([*s, "send", "jobs", "hello", "--header", "a=b", "--dedup-id", "d1", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"message_id": 1, "duplicate": False, "dedup_id": "d1"}
    r = await run([*s, "send", "jobs", "hello", "--dedup-id", "d1"])
    assert r.stdout == "sent message 1 (duplicate) dedup_id=d1\n"
    r = await run([*s, "receive", "jobs", "--max", "5", "--json", "--ack"])
    assert r.exit_code == 0
    [m] = json.loads(r.stdout)
    assert (m["body"], m["headers"], m["delivery_count"], m["receipt"]) == (
        "hello", {"a": "b"}, 1, "1:1")
    assert fake.ops_at("ack", 1) == [{"queue": "jobs", "receipts": ["1:1"]}]
    r = await run([*s, "receive", "jobs"])
    assert r.stdout == "no messages\n"
    r = await run([*s, "queue", "list", "--json"])
    assert json.loads(r.stdout) == ["jobs"]
    r = await run([*s, "queue", "stats", "jobs", "--json"])
    assert json.loads(r.stdout)["acked"] == 1
    r = await run([*s, "queue", "stats", "jobs"])
    assert "acked" in r.stdout and "│" in r.stdout  # a rich table


async def test_errors_are_one_line_with_exit_status_1(fake: FakeCluster) -> None:
    r = await run([*servers(fake), "queue", "stats", "nope"])
    assert r.exit_code == 1
    assert r.stderr == "error: QUEUE_NOT_FOUND: no queue 'nope'\n"  # the machine's message
    assert r.stdout == ""
    r = await run(["--servers", "127.0.0.1:9", "--timeout", "0.3", "queue", "list"])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: CLUSTER_UNAVAILABLE: list_queues: ")
    assert len(r.stderr.splitlines()) == 1
    await run([*servers(fake), "queue", "create", "q"])
    await run([*servers(fake), "send", "q", "x"])
    [m] = json.loads((await run([*servers(fake), "receive", "q", "--json"])).stdout)
    fake.faults["ack"] = ["drop_after"]
    r = await run([*servers(fake), "ack", "q", m["receipt"]])
    assert r.exit_code == 1 and r.stderr.startswith("error: OUTCOME_UNKNOWN: ack: "), r.stderr
    assert "may or may not have happened" in r.stderr
    # usage errors are click's (status 2)
    r = await run([*servers(fake), "send", "q", "x", "--count", "2", "--dedup-id", "d"])
    assert r.exit_code == 2 and "--dedup-id" in r.stderr
    r = await run(["--servers", "nohost", "queue", "list"])
    assert r.exit_code == 2 and "--servers" in r.stderr


async def test_bulk_send_from_stdin_and_count(fake: FakeCluster) -> None:
    s = servers(fake)
    await run([*s, "queue", "create", "q"])
    lines = "".join(f"line {i}\n" for i in range(150))
    r = await run([*s, "send", "q", "--group", "g"], input=lines)
    assert r.exit_code == 0 and r.stdout == "sent 150 messages to q\n"
    r = await run([*s, "send", "q", "same", "--count", "250", "--json"])
    assert json.loads(r.stdout)["sent"] == 250
    sizes = [len(a["messages"]) for a in fake.ops_at("enqueue_batch", 1)]
    assert sizes == [100, 50, 100, 100, 50]
    bodies = [m["body"] for a in fake.ops_at("enqueue_batch", 1)[:2] for m in a["messages"]]
    assert bodies == [f"line {i}".encode() for i in range(150)]
    assert fake.ops_at("enqueue_batch", 1)[0]["messages"][0]["group"] == "g"
    assert len(set(fake.dedup_ids_seen)) == 400  # every message its own dedup id


async def test_topics_dlq_leader_and_status(fake: FakeCluster) -> None:
    s = servers(fake)
    await run([*s, "queue", "create", "a"])
    r = await run([*s, "queue", "list", "--json"])
    assert json.loads(r.stdout) == ["a", "a.dlq"]  # creating a made its dead-letter queue
    assert (await run([*s, "topic", "create", "t"])).stdout == "created topic t\n"
    assert (await run([*s, "topic", "subscribe", "t", "a"])).exit_code == 0
    r = await run([*s, "topic", "publish", "t", "news", "--json"])
    assert json.loads(r.stdout)["results"][0]["queue"] == "a"
    r = await run([*s, "topic", "list", "--json"])
    assert json.loads(r.stdout) == {"t": ["a"]}
    for i in range(3):
        await run([*s, "send", "a.dlq", f"dead {i}", "--header", "x-death-queue=a"])
    r = await run([*s, "dlq", "redrive", "a.dlq"])
    assert r.stdout == "moved 3 messages; 0 left in a.dlq\n"
    r = await run([*s, "leader", "transfer", "--to", "2"])
    assert r.stdout == "leadership transferred from node 1 to node 2\n"
    fake.nodes[3].stop()
    r = await run([*s, "cluster", "status", "--json"])
    rows = json.loads(r.stdout)
    assert [(x["reachable"], x.get("role")) for x in rows] == [
        (True, "follower"), (True, "leader"), (False, None)]
    r = await run([*s, "cluster", "status"])
    assert "unreachable" in r.stdout and "leader" in r.stdout


async def test_servers_from_env_and_local_config(
    fake: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run([*servers(fake), "queue", "create", "q"])
    r = await run(["queue", "list", "--json"], env={"RAFTQ_SERVERS": fake.addr(2)})
    assert json.loads(r.stdout) == ["q", "q.dlq"]  # the machine made q's dead-letter queue
    cfg = ClusterConfig(
        cluster_id="t", secret=b"x" * 16,
        nodes={
            n.id: NodeConfig(n.id, ("127.0.0.1", 1), ("127.0.0.1", n.port), tmp_path / f"n{n.id}")
            for n in fake.nodes.values()
        },
    )
    write(cfg, tmp_path / "data" / "local" / "cluster.toml")
    monkeypatch.chdir(tmp_path)
    before = len(fake.ops("list_queues"))
    r = await run(["queue", "list", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == ["q", "q.dlq"]
    assert len(fake.ops("list_queues")) == before + 1


async def test_send_takes_any_bytes_and_says_how_far_a_failed_bulk_send_got(
    fake: FakeCluster,
) -> None:
    s = servers(fake)
    assert (await run([*s, "queue", "create", "b", "--no-dlq"])).exit_code == 0
    r = await run([*s, "send", "b"], input=b"ok1\n\xff\xfe\nok2\n")
    assert r.exit_code == 0, r.output
    bodies = [a["body"] for _, a in fake.ops("enqueue_batch") for a in a["messages"]]
    assert bodies == [b"ok1", b"\xff\xfe", b"ok2"]
    r = await run([*s, "send", "b", "--header", "k=v", "--dedup-id", ""])
    assert r.exit_code == 2 and "must not be empty" in r.output
    # A bulk send that fails part-way says how many were sent before the error.
    r = await run([*s, "--timeout", "2", "send", "missing"], input="a\nb\n")
    assert r.exit_code == 1
    assert "sent 0 messages before this error" in r.stderr and "QUEUE_NOT_FOUND" in r.stderr
