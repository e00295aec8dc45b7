"""The adapter registry: versioned, checksummed, per-tenant adapter directories.

Layout under ``root``::

    <tenant>/
        versions/v0001/            one consolidation cycle's output (promoted or not)
            adapter_model.safetensors, adapter_config.json, transfer.jsonl, probes.jsonl, ...
            manifest.json          lineage, experiences, offsets, settings, probes, outcome,
                                   timings and the sha256 of every other file
        current.json               {"version": "v0003"}: the tenant's live adapter
        history.jsonl              every promote / rollback, appended
        .lock                      flock serialising writers of this tenant
        .staging-<id>/             a version being written (ignored and swept if left by a crash)

A version directory appears by ``rename`` of a fully written, fsynced staging directory, and the
current pointer moves by ``rename`` of a fully written file; so a reader (or a crash at any step)
sees the old state or the new one, never a mix. A version whose checksums fail is refused with
:class:`~memory.errors.IntegrityError` and never becomes current.

The registry moves files; it never imports torch. What goes in the files is the consolidator's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reverie.memory.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from reverie.memory.experience import validate_tenant
from reverie.memory.files import fsync_dir, write_durably

__all__ = ["AdapterRegistry", "VersionInfo"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class _Any:
    """The default of ``expect_current``: any current version will do."""


_ANY = _Any()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    """A version as listed: its name, directory and manifest."""

    tenant: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def outcome(self) -> str:
        return str(self.manifest.get("outcome", "unknown"))

    @property
    def parent(self) -> str | None:
        parent = self.manifest.get("parent")
        return str(parent) if parent else None


class AdapterRegistry:
    """Per-tenant adapter versions on local or shared disk (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths and locks -------------------------------------------------------------------
    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / validate_tenant(tenant)

    def _versions(self, tenant: str) -> Path:
        return self._tenant_dir(tenant) / "versions"

    @contextmanager
    def _locked(self, tenant: str) -> Iterator[Path]:
        directory = self._tenant_dir(tenant)
        (directory / "versions").mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield directory
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- writing a version -----------------------------------------------------------------
    @contextmanager
    def stage(self, tenant: str) -> Iterator[Path]:
        """A scratch directory to write a new version's files into; removed if not committed."""
        directory = self._tenant_dir(tenant)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def commit(self, tenant: str, staging: Path, manifest: dict[str, Any]) -> VersionInfo:
        """Turn a staging directory into the next version ``vNNNN``, atomically.

        The manifest gets ``version``, ``created_at`` and ``checksums`` added. Nothing becomes
        current here: call :meth:`promote`.
        """
        with self._locked(tenant) as directory:
            version = self._next_version(tenant)
            checksums = {
                p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST
            }
            full = {
                **manifest,
                "tenant": tenant,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(),
                "checksums": checksums,
            }
            write_durably(staging / MANIFEST, json.dumps(full, indent=2, sort_keys=True))
            for p in staging.iterdir():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(staging)
            target = directory / "versions" / version
            os.rename(staging, target)
            fsync_dir(target.parent)
            logger.info("registry: committed %s/%s (%s)", tenant, version, full.get("outcome"))
            return VersionInfo(tenant, version, target, full)

    def _next_version(self, tenant: str) -> str:
        numbers = [int(m.group(1)) for m in map(_VERSION_RE.match, self._names(tenant)) if m]
        return f"v{max(numbers, default=0) + 1:04d}"

    def _names(self, tenant: str) -> list[str]:
        versions = self._versions(tenant)
        if not versions.exists():
            return []
        return sorted(p.name for p in versions.iterdir() if _VERSION_RE.match(p.name))

    # -- reading ---------------------------------------------------------------------------
    def versions(self, tenant: str) -> list[VersionInfo]:
        """Every version of ``tenant``, oldest first (unverified; see :meth:`verify`)."""
        return [self._info(tenant, name) for name in self._names(tenant)]

    def get(self, tenant: str, version: str) -> VersionInfo:
        if not _VERSION_RE.match(version):
            raise InvalidInputError("version", f"{version!r} is not a version name like v0001")
        if version not in self._names(tenant):
            raise NotFoundError(f"tenant {tenant!r} has no adapter version {version!r}")
        return self._info(tenant, version)

    def _info(self, tenant: str, version: str) -> VersionInfo:
        path = self._versions(tenant) / version
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise IntegrityError(f"{tenant}/{version}: unreadable manifest ({err})") from None
        return VersionInfo(tenant, version, path, manifest)

    def verify(self, tenant: str, version: str) -> VersionInfo:
        """The version, after checking every file against its checksum."""
        info = self.get(tenant, version)
        expected = info.manifest.get("checksums")
        if not isinstance(expected, dict) or not expected:
            raise IntegrityError(f"{tenant}/{version}: manifest lists no checksums")
        present = {p.name for p in info.path.iterdir() if p.name != MANIFEST}
        if present != set(expected):
            raise IntegrityError(
                f"{tenant}/{version}: files {sorted(present ^ set(expected))} do not match the "
                "manifest; the version is damaged and cannot be used"
            )
        for name, digest in expected.items():
            if _sha256(info.path / name) != digest:
                raise IntegrityError(
                    f"{tenant}/{version}: checksum mismatch in {name}; the version is damaged "
                    "and cannot be used (roll back to another version)"
                )
        return info

    def current(self, tenant: str) -> VersionInfo | None:
        """The tenant's live version, or None before its first promotion."""
        pointer = self._tenant_dir(tenant) / "current.json"
        try:
            version = json.loads(pointer.read_text())["version"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise IntegrityError(
                f"tenant {tenant!r}: unreadable current pointer {pointer} ({err}); repair it with "
                f"'reverie adapters promote --tenant {tenant} --version vNNNN'"
            ) from None
        return self.get(tenant, version)

    def lineage(self, tenant: str, version: str | None = None) -> list[VersionInfo]:
        """``version`` (default: current) and its ancestors, oldest first."""
        info = self.get(tenant, version) if version else self.current(tenant)
        chain: list[VersionInfo] = []
        while info is not None:
            chain.append(info)
            info = self.get(tenant, info.parent) if info.parent else None
        return chain[::-1]

    def history(self, tenant: str) -> list[dict[str, Any]]:
        path = self._tenant_dir(tenant) / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def tenants(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    # -- moving the pointer ----------------------------------------------------------------
    def promote(
        self,
        tenant: str,
        version: str,
        *,
        reason: str = "promote",
        expect_current: str | _Any | None = _ANY,
    ) -> VersionInfo:
        """Make ``version`` current after verifying it; atomic (write, fsync, rename). With
        ``expect_current``, only if the current version is still that one (None: no version),
        else :class:`ConflictError`: a cycle promotes only on top of what it trained from."""
        with self._locked(tenant) as directory:
            info = self.verify(tenant, version)
            try:
                previous = self.current(tenant)
            except IntegrityError:
                if not isinstance(expect_current, _Any):
                    raise
                previous = None  # a damaged pointer: promoting (or rolling back) repairs it
            if not isinstance(expect_current, _Any) and expect_current != (
                previous.version if previous else None
            ):
                raise ConflictError(
                    f"tenant {tenant!r}: {version} was trained on {expect_current}, but the "
                    f"current version is now {previous.version if previous else None}"
                )
            for step in self.promotion_steps(directory, version):
                step()
            self._append_history(
                directory,
                {
                    "action": reason,
                    "version": version,
                    "from": previous.version if previous else None,
                },
            )
            logger.info("registry: %s/%s is current (%s)", tenant, version, reason)
            return info

    @staticmethod
    def promotion_steps(directory: Path, version: str) -> list[Callable[[], None]]:
        """The pointer move as separate durable steps (tests crash between each)."""
        tmp = directory / f".current.{uuid.uuid4().hex}.tmp"
        return [
            lambda: write_durably(tmp, json.dumps({"version": version})),
            lambda: os.replace(tmp, directory / "current.json"),
            lambda: fsync_dir(directory),
        ]

    def erase(self, tenant: str, versions: list[str], *, reason: str) -> None:
        """Delete the weights and every file holding experience text of ``versions``, keeping
        only their manifests (marked erased) for the record; a current one stops being current.
        Erased versions fail verification, so they can never be promoted or rolled back to."""
        with self._locked(tenant) as directory:
            self._erase(tenant, directory, versions, reason)

    def erase_holding(self, tenant: str, forgotten: set[str], *, reason: str) -> list[VersionInfo]:
        """Erase every version whose weights hold one of the ``forgotten`` experience ids: the
        versions trained on them and every version trained on top of those, served or not. If
        the current version is one, the newest of its ancestors that holds none becomes current
        first (or no version at all), so from the moment this returns no served adapter holds
        them.
        Returns the erased versions (with their manifests as they were)."""
        with self._locked(tenant) as directory:
            versions = {v.version: v for v in self.versions(tenant)}

            def holds(info: VersionInfo) -> bool:
                ids = {e["id"] for e in info.manifest.get("experiences", [])}
                return bool(ids & forgotten) and "erased" not in info.manifest

            doomed = {name for name, info in versions.items() if holds(info)}
            # Every version trained on top of one of those (promoted or not: a rejected child
            # holds the weights, replays the transfer items and probed the fact as well).
            grown = True
            while grown:
                children = {
                    name
                    for name, info in versions.items()
                    if info.manifest.get("parent") in doomed and "erased" not in info.manifest
                }
                grown = not children <= doomed
                doomed |= children
            current = self.current(tenant)
            lineage = self.lineage(tenant) if current else []
            first = next((i for i, v in enumerate(lineage) if v.version in doomed), None)
            if current is not None and first is not None:
                doomed |= {v.version for v in lineage[first:]}
                keep = lineage[first - 1].version if first > 0 else None
                if keep is not None:
                    for step in self.promotion_steps(directory, keep):
                        step()
                    self._append_history(
                        directory, {"action": "erase", "version": keep, "from": current.version}
                    )
            erased = [versions[name] for name in sorted(doomed)]
            if erased:
                self._erase(tenant, directory, sorted(doomed), reason)
            return erased

    def _erase(self, tenant: str, directory: Path, versions: list[str], reason: str) -> None:
        current = self.current(tenant)
        if current is not None and current.version in versions:
            (directory / "current.json").unlink()
            fsync_dir(directory)
        for version in versions:
            info = self.get(tenant, version)
            for path in info.path.iterdir():
                if path.name != MANIFEST:
                    path.unlink()
            manifest = {
                **info.manifest,
                "erased": {"at": datetime.now(UTC).isoformat(), "reason": reason},
            }
            write_durably(
                info.path / f".{MANIFEST}.tmp", json.dumps(manifest, indent=2, sort_keys=True)
            )
            os.replace(info.path / f".{MANIFEST}.tmp", info.path / MANIFEST)
        self._append_history(
            directory,
            {"action": "erase", "version": None, "erased": versions, "reason": reason},
        )
        logger.warning("registry: erased %s/%s (%s)", tenant, ",".join(versions), reason)

    def delete_tenant(self, tenant: str) -> int:
        """Delete every version of ``tenant`` (weights, texts, manifests), its pointer and its
        history; returns how many versions there were."""
        with self._locked(tenant) as directory:
            n = len(self._names(tenant))
            for path in directory.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != ".lock":
                    path.unlink()
            fsync_dir(directory)
        logger.warning("registry: deleted tenant %s (%d versions)", tenant, n)
        return n

    def rollback(self, tenant: str, version: str | None = None) -> VersionInfo:
        """Make ``version`` current, default the current version's promoted parent."""
        if version is None:
            current = self.current(tenant)
            if current is None or current.parent is None:
                raise NotFoundError(f"tenant {tenant!r} has no earlier version to roll back to")
            version = current.parent
        return self.promote(tenant, version, reason="rollback")

    def _append_history(self, directory: Path, event: dict[str, Any]) -> None:
        event = {"at": datetime.now(UTC).isoformat(), **event}
        with open(directory / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def sweep(self, tenant: str) -> int:
        """Remove staging directories and pointer temp files left by crashes; returns count."""
        directory = self._tenant_dir(tenant)
        if not directory.exists():
            return 0
        removed = 0
        with self._locked(tenant):
            for p in directory.iterdir():
                if p.name.startswith(".staging-"):
                    shutil.rmtree(p, ignore_errors=True)
                    removed += 1
                elif p.name.startswith(".current.") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed
