"""What the `raftq` commands share: error exits, consoles, JSON output, the client a command
uses, the local cluster's data directory option and its running nodes.

Kept apart from cluster/cli.py so that command modules (cluster/membership_cli.py) use it
without importing the command tree (no import cycle).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from cluster.client import Client, parse_servers
from cluster.launcher import CONFIG_NAME, PIDS_NAME, RecordedNode, process_matches, read_pids
from node.config import load

DEFAULT_DATA_DIR = Path("data/local")
DEFAULT_SERVERS = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


def _out() -> Console:
    # Not a terminal (a pipe, a test): wide enough that tables are not squeezed to 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _resolve_servers(ctx: click.Context, data_dir: Path | None = None) -> list[str]:
    root = ctx.find_root()
    text = root.params.get("servers")
    if text:
        try:
            return parse_servers(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=root, param_hint="--servers") from None
    path = (data_dir or DEFAULT_DATA_DIR) / CONFIG_NAME
    if path.exists():
        return load(path).client_addrs()
    return list(DEFAULT_SERVERS)


def _client(ctx: click.Context, data_dir: Path | None = None, **options: Any) -> Client:
    timeout_s = ctx.find_root().params.get("timeout") or 15.0
    options.setdefault("timeout_s", timeout_s)
    options.setdefault("connect_timeout_s", min(2.0, timeout_s))
    options.setdefault("request_timeout_s", min(10.0, timeout_s))
    return Client(_resolve_servers(ctx, data_dir), **options)


_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
    show_default=True, help="Directory of the local cluster (config, data, logs, pids).",
)


def _running_recorded(data_dir: Path) -> dict[int, RecordedNode]:
    """Recorded nodes of this directory's cluster that still run, by node id."""
    return {
        n.node_id: n for n in read_pids(data_dir / PIDS_NAME)
        if process_matches(n.pid, n.config_path, n.node_id)
    }
