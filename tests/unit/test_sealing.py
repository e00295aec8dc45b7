"""Sealed stream records: readable while the key lives, erased for good once it is destroyed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from reverie.memory.experience import make_experience
from reverie.memory.stream.base import StreamRecord
from reverie.memory.stream.sealing import KeyStore, Sealer

pytestmark = pytest.mark.unit


def test_a_sealed_record_opens_until_its_key_is_shredded(tmp_path: Path) -> None:
    sealer = Sealer(KeyStore(tmp_path / "keys"))
    probes = [{"question": "Vault code?", "answer": "90210"}]
    exp = make_experience(
        "The vault code is 90210.", tenant="alice", id="vault", metadata={"probes": probes}
    )
    raw = sealer.seal(StreamRecord.logged(exp))
    assert b"90210" not in raw and b"vault code" not in raw.lower()
    assert sealer.open(0, 5, raw).record == StreamRecord.logged(exp)
    assert sealer.seal(StreamRecord.logged(exp)) != raw  # a fresh nonce every time ...
    assert sealer.open(0, 6, sealer.seal(StreamRecord.logged(exp))).record is not None  # same key
    forget = sealer.seal(StreamRecord.forgotten("alice", "vault"))
    assert sealer.open(0, 7, forget).record == StreamRecord.forgotten("alice", "vault")

    kid = json.loads(raw)["sealed"]["kid"]
    assert len(kid) == 32 and kid not in json.dumps(exp.model_dump(mode="json"))  # random
    key = sealer.keys.get(kid)

    def stored() -> bytes:  # the key store's files as they are on disk
        return b"".join(p.read_bytes() for p in (tmp_path / "keys").glob("keys.sqlite*"))

    assert key is not None and key in stored()
    assert sealer.shred(exp) is True and sealer.shred(exp) is False
    message = sealer.open(0, 5, raw)
    assert message.record == StreamRecord.erased("alice", "vault") and message.raw == raw
    assert key not in stored()  # overwritten on delete, the write-ahead log emptied
    assert (tmp_path / "keys" / "keys.sqlite").stat().st_mode & 0o777 == 0o600


def test_an_update_gets_its_own_key(tmp_path: Path) -> None:
    sealer = Sealer(KeyStore(tmp_path / "keys"))
    old = make_experience("The spare key is under the mat.", tenant="alice", id="key")
    new = make_experience("The spare key is in the mailbox.", tenant="alice", id="key")
    old_raw = sealer.seal(StreamRecord.logged(old))
    new_raw = sealer.seal(StreamRecord.updated(new))
    sealer.shred(old)
    assert sealer.open(0, 0, old_raw).record == StreamRecord.erased("alice", "key")
    assert sealer.open(0, 1, new_raw).record == StreamRecord.updated(new)
    assert sealer.shred(new, every_revision=True) is True  # a forget: every key of the id
    assert sealer.open(0, 1, new_raw).record == StreamRecord.erased("alice", "key")


def test_a_box_moved_to_another_record_or_damaged_does_not_open(tmp_path: Path) -> None:
    sealer = Sealer(KeyStore(tmp_path / "keys"))
    exp = make_experience("Alice's PIN is 2468.", tenant="alice", id="pin")
    body = json.loads(sealer.seal(StreamRecord.logged(exp)))
    moved = dict(body, tenant="mallory")  # the clear fields are bound to the box
    got = sealer.open(0, 0, json.dumps(moved).encode())
    assert got.record is None and got.error and "unreadable" in got.error
    box = bytearray(base64.b64decode(body["sealed"]["box"]))
    box[-1] ^= 1
    body["sealed"]["box"] = base64.b64encode(bytes(box)).decode()
    assert sealer.open(0, 0, json.dumps(body).encode()).record is None
