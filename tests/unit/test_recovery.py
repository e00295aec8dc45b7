"""Recovery, tested directly: what reconcile finishes after a crash, on a real registry and
buffer (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reverie.consolidator.recovery import reconcile
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer
from tests.unit.test_buffer import exps, open_buffer, unit


def commit(reg: AdapterRegistry, parent: str | None, ids: list[str]) -> str:
    with reg.stage("a") as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"w" + ",".join(ids).encode())
        manifest = {
            "parent": parent,
            "outcome": "promoted",
            "experiences": [{"id": i} for i in ids],
        }
        return reg.commit("a", staging, manifest).version


def setup(tmp_path: Path) -> tuple[AdapterRegistry, Buffer]:
    buf = open_buffer(tmp_path / "buffer")
    buf.add_many(exps("a", 4), unit(np.random.default_rng(0), 4))
    return AdapterRegistry(tmp_path / "adapters"), buf


def test_a_promotion_committed_but_never_made_current_is_rolled_forward(tmp_path: Path) -> None:
    reg, buf = setup(tmp_path)
    v1 = commit(reg, None, ["e0"])
    reg.promote("a", v1)
    v2 = commit(reg, v1, ["e1"])  # a crash here: committed as promoted, pointer not moved
    reconcile(reg, buf, "a")
    current = reg.current("a")
    assert current is not None and current.version == v2
    assert reg.history("a")[-1]["action"] == "recover"
    statuses = {s.experience.id: (s.status, s.version) for s in buf.experiences("a")}
    assert statuses["e0"] == ("consolidated", v1) and statuses["e1"] == ("consolidated", v2)
    assert statuses["e2"] == ("buffered", None)
    buf.close()


def test_a_version_rolled_back_from_is_not_rolled_forward(tmp_path: Path) -> None:
    reg, buf = setup(tmp_path)
    v1 = commit(reg, None, ["e0"])
    reg.promote("a", v1)
    v2 = commit(reg, v1, ["e1"])
    reg.promote("a", v2)
    reg.rollback("a")  # on purpose: v2 was current once
    reconcile(reg, buf, "a")
    current = reg.current("a")
    assert current is not None and current.version == v1
    buf.close()


def test_experiences_of_the_live_lineage_are_marked_consolidated(tmp_path: Path) -> None:
    """A crash between the pointer move and the buffer update leaves them 'buffered'."""
    reg, buf = setup(tmp_path)
    v1 = commit(reg, None, ["e0", "e1"])
    reg.promote("a", v1)
    assert {s.status for s in buf.experiences("a")} == {"buffered"}
    reconcile(reg, buf, "a")
    marked = {s.experience.id: s.status for s in buf.experiences("a")}
    assert marked == {
        "e0": "consolidated",
        "e1": "consolidated",
        "e2": "buffered",
        "e3": "buffered",
    }
    buf.close()


def test_an_interrupted_forget_is_finished(tmp_path: Path) -> None:
    reg, buf = setup(tmp_path)
    v1 = commit(reg, None, ["e0"])
    reg.promote("a", v1)
    v2 = commit(reg, v1, ["e1", "e2"])
    reg.promote("a", v2)
    buf.mark("a", ["e0"], "consolidated", version=v1)
    buf.mark("a", ["e1", "e2"], "consolidated", version=v2)
    buf.delete("a", "e1")  # the forget reached the buffer, then the process died
    reconcile(reg, buf, "a")
    current = reg.current("a")
    assert current is not None and current.version == v1
    assert "erased" in reg.get("a", v2).manifest
    e2 = buf.get("a", "e2")
    assert e2 is not None and e2.status == "buffered"  # consolidated again, without e1
    buf.close()
