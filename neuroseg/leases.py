"""Leases on images, so that concurrent runs on one root split the work (light).

Two ``neuroseg infer`` runs, two deployments triggered together or the workers of one run all
list the same pending uploads; each image is segmented by whoever takes its lease first. A
lease is a small JSON file ``<root>/leases/<plate_id>/<image_id>.json`` (owner, times)
created with :func:`neuroseg.storage.create_exclusive`, so of concurrent takers exactly one
wins, on a local or shared folder and on S3 alike. The holder deletes it when the image is
done; a lease older than its ``ttl`` (a crashed holder) may be taken over.

A lease saves work; it does not guard the table: every write is atomic and keyed by plate and
image, so even two runs that both segment an image (a takeover of a lease whose holder was
only slow) write the same rows once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from dataclasses import dataclass

from neuroseg import storage

__all__ = ["DEFAULT_TTL", "Lease", "acquire", "holder", "lease_uri", "new_owner", "release"]

DEFAULT_TTL = 900.0
"""Seconds after which a lease counts as abandoned (an image takes seconds)."""


@dataclass(frozen=True)
class Lease:
    """A lease held by this process: where it is and who holds it."""

    uri: str
    owner: str
    expires_at: str


def lease_uri(root: str, plate_id: str, image_id: str) -> str:
    return storage.join(root, "leases", plate_id, f"{image_id}.json")


def new_owner(run: str | None = None) -> str:
    """A unique holder name: the run (e.g. a flow run id), host, process and a random part."""
    return f"{run or 'run'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _expired(uri: str, now: dt.datetime) -> bool:
    try:
        held = storage.read_json(uri)
        expires = dt.datetime.fromisoformat(held["expires_at"])
    except FileNotFoundError:
        return True  # released meanwhile: free
    except (ValueError, KeyError, TypeError):
        return False  # unreadable (another writer's storage is odd): leave it to its ttl
    return expires <= now


def acquire(
    root: str, plate_id: str, image_id: str, *, owner: str, ttl: float = DEFAULT_TTL
) -> Lease | None:
    """Take the image's lease, or None when another holder has it (and it has not expired).

    An expired lease is deleted and taken over (once per call).
    """
    uri = lease_uri(root, plate_id, image_id)
    for _attempt in range(2):
        now = _now()
        expires = (now + dt.timedelta(seconds=float(ttl))).isoformat()
        body = {"owner": owner, "acquired_at": now.isoformat(), "expires_at": expires}
        if storage.create_exclusive(uri, json.dumps(body).encode()):
            return Lease(uri, owner, expires)
        if not _expired(uri, now):
            return None
        storage.delete(uri, missing_ok=True)
    return None


def holder(root: str, plate_id: str, image_id: str) -> dict | None:
    """The current lease's content, or None when the image is free."""
    try:
        return storage.read_json(lease_uri(root, plate_id, image_id))
    except (FileNotFoundError, ValueError):
        return None


def release(lease: Lease) -> None:
    """Give the lease back (delete it) if it is still ours; a lease taken over stays."""
    try:
        held = storage.read_json(lease.uri)
    except (FileNotFoundError, ValueError):
        return
    if held.get("owner") == lease.owner:
        storage.delete(lease.uri, missing_ok=True)
