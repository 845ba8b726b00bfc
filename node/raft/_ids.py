"""The integer kinds of the Raft core: terms, log indexes and node ids."""

from __future__ import annotations

from typing import NewType

Term = NewType("Term", int)
"""A Raft term number; 0 before any election."""

Index = NewType("Index", int)
"""A log index; the first real entry has index 1, 0 means "before the log"."""

NodeId = NewType("NodeId", int)
"""A node's id in the cluster membership; positive."""
