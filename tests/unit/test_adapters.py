"""The adapter registry: atomic promotion, checksum refusal, rollback, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)


def commit(
    reg: AdapterRegistry,
    tenant: str,
    weights: bytes,
    parent: str | None = None,
    holds: tuple[str, ...] = (),
    outcome: str = "promoted",
) -> str:
    with reg.stage(tenant) as staging:
        (staging / "adapter_model.safetensors").write_bytes(weights)
        (staging / "adapter_config.json").write_text("{}")
        (staging / "transfer.jsonl").write_text("".join(f"text of {i}\n" for i in holds))
        manifest = {
            "parent": parent,
            "outcome": outcome,
            "experiences": [{"id": i} for i in holds],
        }
        info = reg.commit(tenant, staging, manifest)
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


def test_promote_on_top_of_an_expected_version_only(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "alice", b"one")
    v2 = commit(reg, "alice", b"two", parent=v1)
    with pytest.raises(ConflictError, match="trained on v0001"):
        reg.promote("alice", v2, expect_current=v1)  # v1 is not current: nothing is
    reg.promote("alice", v1, expect_current=None)
    reg.promote("alice", v2, expect_current=v1)
    current = reg.current("alice")
    assert current is not None and current.version == v2


def test_erase_holding_moves_the_pointer_back_then_erases(tmp_path: Path) -> None:
    """v1 holds a, v2 (on v1) holds b, v3 (on v2) holds c, v4 (rejected, on v3) holds b and
    d. Forgetting b: v2, its descendant v3 and the rejected v4 go; v1 is served at once."""
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "t", b"1", holds=("a",))
    v2 = commit(reg, "t", b"2", parent=v1, holds=("b",))
    v3 = commit(reg, "t", b"3", parent=v2, holds=("c",))
    v4 = commit(reg, "t", b"4", parent=v3, holds=("b", "d"), outcome="rejected_locality")
    for v in (v1, v2, v3):
        reg.promote("t", v)
    erased = reg.erase_holding("t", {"b"}, reason="forgotten: b")
    assert [v.version for v in erased] == [v2, v3, v4]
    current = reg.current("t")
    assert current is not None and current.version == v1
    for v in (v2, v3, v4):
        info = reg.get("t", v)
        assert "erased" in info.manifest
        assert [p.name for p in info.path.iterdir()] == ["manifest.json"]  # no text, no weights
        with pytest.raises(IntegrityError):
            reg.promote("t", v)
    assert reg.erase_holding("t", {"b"}, reason="again") == []  # nothing left holding it
    reg.erase_holding("t", {"a"}, reason="forgotten: a")
    assert reg.current("t") is None  # no version left that does not hold a: the base model


def test_a_garbage_pointer_is_contained_to_its_tenant_and_promote_repairs_it(
    tmp_path: Path,
) -> None:
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "bob", b"one")
    reg.promote("bob", v1)
    reg.promote("alice", commit(reg, "alice", b"a"))
    (tmp_path / "bob" / "current.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="adapters promote --tenant bob"):
        reg.current("bob")
    current = reg.current("alice")
    assert current is not None and current.version == "v0001"
    reg.promote("bob", v1)  # the repair the error names
    repaired = reg.current("bob")
    assert repaired is not None and repaired.version == v1


def test_erase_holding_takes_a_rejected_child_that_does_not_list_the_fact(tmp_path: Path) -> None:
    """v2 (rejected, trained on v1) lists only c, but its weights grew from v1's, its transfer
    set replays v1's items and its probes asked about them: forgetting a (in v1) erases it."""
    reg = AdapterRegistry(tmp_path)
    v1 = commit(reg, "t", b"1", holds=("a",))
    v2 = commit(reg, "t", b"2", parent=v1, holds=("c",), outcome="rejected_locality")
    v3 = commit(reg, "t", b"3", parent=v2, holds=("d",), outcome="rejected_locality")
    other = commit(reg, "t", b"x", holds=("e",))  # another branch: kept
    reg.promote("t", v1)
    erased = reg.erase_holding("t", {"a"}, reason="forgotten: a")
    assert [v.version for v in erased] == [v1, v2, v3]
    assert "erased" not in reg.get("t", other).manifest
