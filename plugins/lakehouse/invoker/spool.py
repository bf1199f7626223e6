"""A disk spool for events that arrive while the metadata database is unreachable.

Some senders do not retry: SeaweedFS's filer webhook dead-letters an event at the first 503 (seen
with 4.48 while Postgres restarted), so answering "try again" loses the file. The invoker instead
writes the event's body to this spool, fsynced, answers 200 only then, and moves spooled events
into the ledger once the database answers again. The ledger's key (bucket, key, version, flow)
makes a spooled event that also arrived another way count as one more delivery, not a second run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EventSpool"]

log = logging.getLogger(__name__)


class EventSpool:
    """One JSON file per event body, named so that a listing is in arrival order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def append(self, route: str, payload: dict[str, Any]) -> Path:
        """Write durably (file and folder fsynced) before the caller acknowledges the event."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"route": route, "payload": payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.folder / name)
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return self.folder / name

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.exists() else []

    def drain(self, store: Callable[[str, dict[str, Any]], object]) -> int:
        """Hand every spooled event to ``store`` in arrival order, removing each once stored; stop
        at the first one that cannot be stored yet (the database is still away). Returns how many
        were stored."""
        stored = 0
        for path in self.pending():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:  # kept aside, never dropped silently
                log.error("spooled event %s cannot be read (%s); moved to %s.bad", path, exc, path.name)
                path.replace(path.with_suffix(".bad"))
                continue
            store(entry["route"], entry["payload"])
            path.unlink()
            stored += 1
        return stored
