"""The adapter registry: atomic promotion, checksum refusal, rollback, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.errors import IntegrityError, InvalidInputError, NotFoundError


def commit(reg: AdapterRegistry, tenant: str, weights: bytes, parent: str | None = None) -> str:
    with reg.stage(tenant) as staging:
        (staging / "adapter_model.safetensors").write_bytes(weights)
        (staging / "adapter_config.json").write_text("{}")
        info = reg.commit(tenant, staging, {"parent": parent, "outcome": "promoted"})
    return info.version


def test_versions_number_up_and_promote(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    assert reg.current("alice") is None
    v1 = commit(reg, "alice", b"one")
    v2 = commit(reg, "alice", b"two", parent=v1)
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.current("alice") is None  # committing does not promote
    reg.promote("alice", v1)
    reg.promote("alice", v2)
    current = reg.current("alice")
    assert current is not None and current.version == v2
    assert [v.version for v in reg.lineage("alice")] == [v1, v2]
    assert [h["version"] for h in reg.history("alice")] == [v1, v2]
    assert reg.versions("bob") == []


def test_rollback_to_parent_and_to_any(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "alice", b"one")
    v2 = commit(reg, "alice", b"two", parent=v1)
    v3 = commit(reg, "alice", b"three", parent=v2)
    reg.promote("alice", v3)
    assert reg.rollback("alice").version == v2
    assert reg.rollback("alice", v1).version == v1
    with pytest.raises(NotFoundError, match="no earlier version"):
        reg.rollback("alice")
    assert reg.history("alice")[-1]["action"] == "rollback"


def test_damaged_version_is_refused_and_never_current(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "alice", b"good")
    reg.promote("alice", v1)
    v2 = commit(reg, "alice", b"will rot", parent=v1)
    (reg.get("alice", v2).path / "adapter_model.safetensors").write_bytes(b"bit rot")
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        reg.promote("alice", v2)
    current = reg.current("alice")
    assert current is not None and current.version == v1
    (reg.get("alice", v2).path / "extra.bin").write_bytes(b"")
    with pytest.raises(IntegrityError, match="do not match"):
        reg.verify("alice", v2)


@pytest.mark.parametrize("crash_after", range(4))
def test_crash_at_every_promotion_step_leaves_a_valid_current(
    tmp_path: Path, crash_after: int
) -> None:
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "alice", b"one")
    reg.promote("alice", v1)
    v2 = commit(reg, "alice", b"two", parent=v1)
    steps = AdapterRegistry.promotion_steps(tmp_path / "alice", v2)
    for step in steps[:crash_after]:
        step()  # ... and the process dies here
    reopened = AdapterRegistry(tmp_path)
    current = reopened.current("alice")
    assert current is not None
    assert current.version == (v2 if crash_after >= 2 else v1)
    reopened.verify("alice", current.version)
    reopened.sweep("alice")
    assert not [p for p in (tmp_path / "alice").iterdir() if p.name.endswith(".tmp")]


def test_crash_while_staging_leaves_no_version(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    staging = tmp_path / "alice" / ".staging-dead"
    staging.mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(b"half")
    assert reg.versions("alice") == []
    assert reg.sweep("alice") == 1
    assert commit(reg, "alice", b"one") == "v0001"


def test_bad_names(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    with pytest.raises(InvalidInputError):
        reg.get("alice", "../../etc")
    with pytest.raises(InvalidInputError):
        reg.versions("../x")
    with pytest.raises(NotFoundError):
        reg.get("alice", "v0042")
