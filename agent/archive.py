"""Export a tenant to one file and import it elsewhere: its experiences and its adapter versions.

The file is a tar archive::

    manifest.json        format, tenant, when, counts, the current version
    experiences.jsonl    every experience (id, text, source, metadata, created_at, status)
    adapters/            the tenant's registry directory: versions (weights, router, manifests,
                         checksums) and the current pointer

Importing logs every experience through the client (durable in the stream, recallable, ids and
timestamps kept), copies the versions into the registry (each verified against its checksums),
then marks the experiences the current version's lineage holds as consolidated, so nothing is
trained twice. The target tenant must be empty: an import never merges into existing memory.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reverie.agent.client import MemoryClient, writable
from reverie.memory.adapters import MANIFEST
from reverie.memory.errors import ConflictError, IntegrityError, InvalidInputError
from reverie.memory.experience import validate_tenant
from reverie.memory.files import atomic_write_text

__all__ = ["FORMAT", "export_tenant", "import_tenant"]

FORMAT = "reverie-tenant/1"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(datetime.now(UTC).timestamp())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _mark_consolidated(client: MemoryClient, tenant: str) -> None:
    """Mark the experiences the current version's lineage holds as consolidated into the version
    that trained them, so the next cycle does not train them again."""
    current = client.registry.current(tenant)
    lineage = client.registry.lineage(tenant) if current else []
    for info in lineage:
        ids = [e["id"] for e in info.manifest.get("experiences", [])]
        client.buffer.mark(tenant, ids, "consolidated", version=info.version)


def _restamp(path: Path, manifest: dict[str, Any], stored: dict[str, Any]) -> None:
    """Point a version's experiences at their records in this deployment's stream (an imported
    manifest names positions in the exporting one, which would read as superseded revisions)."""
    for e in manifest.get("experiences", []):
        row = stored.get(e["id"])
        position = row.position if row is not None else None
        e["partition"] = position.partition if position else None
        e["offset"] = position.offset if position else None
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))


def export_tenant(client: MemoryClient, tenant: str, path: Path) -> dict[str, Any]:
    """Write ``tenant``'s experiences and adapter versions to ``path``; returns the manifest."""
    validate_tenant(tenant)
    rows, cursor = [], None
    while True:
        page = client.list_experiences(tenant=tenant, limit=1000, cursor=cursor)
        rows += [
            {**s.experience.model_dump(mode="json", exclude={"tenant"}), "status": s.status}
            for s in page.items
        ]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    current = client.registry.current(tenant)
    versions = [v.version for v in client.registry.versions(tenant)]
    manifest = {
        "format": FORMAT,
        "tenant": tenant,
        "exported_at": datetime.now(UTC).isoformat(),
        "experiences": len(rows),
        "versions": versions,
        "current": current.version if current else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        _add_bytes(tar, "experiences.jsonl", body.encode())
        registry_dir = client.registry.root / tenant
        if registry_dir.exists():
            for file in sorted(registry_dir.rglob("*")):
                relative = file.relative_to(registry_dir)
                if (
                    file.is_file()
                    and not relative.parts[0].startswith(".")
                    and file.name != ".lock"
                ):
                    tar.add(file, arcname=f"adapters/{relative.as_posix()}", recursive=False)
    partial.replace(path)
    return manifest


def import_tenant(client: MemoryClient, path: Path, tenant: str | None = None) -> dict[str, Any]:
    """Load an export into ``tenant`` (default: the exported tenant's name), which must be empty.
    Returns what was imported."""
    writable(client)
    with tarfile.open(path, "r") as tar:
        try:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            lines = tar.extractfile("experiences.jsonl").read().decode()  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError) as err:
            raise InvalidInputError(
                "file", f"{path} is not a Reverie tenant export ({err})"
            ) from None
        if manifest.get("format") != FORMAT:
            raise InvalidInputError(
                "file", f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}"
            )
        target = validate_tenant(tenant or manifest["tenant"])
        if client.buffer.count(target) or client.registry.versions(target):
            raise ConflictError(
                f"tenant {target!r} already has memory: import into a new tenant (--tenant)"
            )
        with tempfile.TemporaryDirectory(dir=client.registry.root) as scratch:
            members = [m for m in tar.getmembers() if m.name.startswith("adapters/")]
            for member in members:
                if not member.isfile() or ".." in Path(member.name).parts:
                    raise InvalidInputError("file", f"unsafe entry {member.name!r} in {path}")
            tar.extractall(scratch, members=members, filter="data")
            source = Path(scratch) / "adapters"
            if source.exists():
                shutil.move(str(source), str(client.registry.root / target))
    rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    for start in range(0, len(rows), 500):
        batch = rows[start : start + 500]
        client.log_many([{k: v for k, v in r.items() if k != "status"} for r in batch],
                        tenant=target)  # fmt: skip
    stored = client.buffer.get_many(target, [r["id"] for r in rows])
    for version in client.registry.versions(target):
        try:
            client.registry.verify(target, version.version)
        except IntegrityError:
            shutil.rmtree(client.registry.root / target, ignore_errors=True)
            raise
        _restamp(version.path / MANIFEST, version.manifest, stored)
    _mark_consolidated(client, target)
    stats = client.buffer.stats().get(target, {})
    current = client.registry.current(target)
    return {
        "tenant": target,
        "experiences": len(rows),
        "consolidated": stats.get("consolidated", 0),
        "versions": len(client.registry.versions(target)),
        "current": current.version if current else None,
    }
