"""MemoryClient behaviour, run against both stream backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reverie.agent import MemoryClient
from reverie.memory.embedder import Embedder
from reverie.memory.errors import ConflictError, InvalidInputError, NotFoundError
from reverie.memory.stream import StreamRecord
from reverie.settings import load_settings
from tests.conftest import unique

ClientFactory = Callable[[], MemoryClient]


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def open_client(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder
) -> Iterator[ClientFactory]:
    """Each call opens a new client on the same data dir and stream (like a restart)."""
    overrides: dict[str, object] = {"data_dir": tmp_path / "data"}
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka")
        overrides["stream"] = {"bootstrap_servers": broker.bootstrap, "topic": unique("client")}
    opened: list[MemoryClient] = []

    def factory() -> MemoryClient:
        client = MemoryClient(load_settings(**overrides), embedder=embedder)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


def stream_bytes(client: MemoryClient) -> bytes:
    """Every record of the stream as stored (Kafka: as a consumer fetches it)."""
    return b"".join(
        m.raw for p in range(client.stream.partitions) for m in client.stream.read(p, 0, 10_000)
    )


def stream_records(client: MemoryClient) -> list[StreamRecord]:
    out = []
    for p in range(client.stream.partitions):
        out += [m.record for m in client.stream.read(p, 0, 10_000) if m.record]
    return out


def test_log_then_recall_top_hit(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("My dentist appointment is on Friday at 3pm.", tenant="alice")
    exp = client.log(
        "The wifi password at the cabin is hunter2.",
        tenant="alice",
        metadata={"room": "den"},
        source="chat",
    )
    client.log("Lunch with Sam is moved to Thursday.", tenant="alice")
    hits = client.recall("what is the cabin wifi password", tenant="alice", k=3)
    assert hits[0].experience == exp
    assert hits[0].score > hits[1].score
    assert client.get(exp.id, tenant="alice").experience.metadata == {"room": "den"}


def test_relogging_an_id_is_idempotent(open_client: ClientFactory) -> None:
    client = open_client()
    first = client.log("The gym locker code is 4417.", tenant="alice", id="locker")
    again = client.log("The gym locker code is 4417.", tenant="alice", id="locker")
    assert again == first
    assert [r.id for r in stream_records(client)] == ["locker"]
    assert client.status()["tenants"]["alice"]["total"] == 1


def test_reusing_an_id_with_other_content_is_refused(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("The gym locker code is 4417.", tenant="alice", id="locker")
    with pytest.raises(ConflictError, match="locker"):
        client.log("The gym locker code is 9999.", tenant="alice", id="locker")
    assert len(stream_records(client)) == 1


def test_a_bad_batch_writes_nothing(open_client: ClientFactory) -> None:
    client = open_client()
    with pytest.raises(InvalidInputError) as info:
        client.log_many(["fine", {"text": "also fine"}, {"text": ""}], tenant="alice")
    assert info.value.field == "items[2].text"
    with pytest.raises(InvalidInputError, match=r"items\[0\]\.colour"):
        client.log_many([{"text": "x", "colour": "red"}], tenant="alice")
    assert stream_records(client) == []
    assert client.status()["tenants"] == {}


def test_log_many_returns_in_order_and_dedupes(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("already here", tenant="alice", id="old")
    got = client.log_many(
        [
            {"text": "already here", "id": "old"},
            "brand new",
            {"text": "dup", "id": "d"},
            {"text": "dup", "id": "d"},
        ],
        tenant="alice",
    )
    assert [e.text for e in got] == ["already here", "brand new", "dup", "dup"]
    assert sorted(r.id for r in stream_records(client)) == sorted(["old", got[1].id, "d"])


def test_tenants_are_isolated(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("Alice's bank PIN is 2468.", tenant="alice", id="pin")
    client.log("Bob likes jazz.", tenant="bob")
    hits = client.recall("bank PIN", tenant="bob", k=10)
    assert [h.experience.tenant for h in hits] == ["bob"]
    with pytest.raises(NotFoundError):
        client.get("pin", tenant="bob")
    with pytest.raises(NotFoundError):
        client.forget("pin", tenant="bob")
    assert client.get("pin", tenant="alice")


def test_forget_erases_for_good(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("The safe combination is 12-34-56.", tenant="alice", id="safe")
    client.log("The plants need water on Sundays.", tenant="alice", id="plants")
    client.forget("safe", tenant="alice")
    assert [h.experience.id for h in client.recall("safe combination", tenant="alice")] == [
        "plants"
    ]
    assert StreamRecord.forgotten("alice", "safe") in stream_records(client)
    # No readable copy in the stream: overwritten in place (embedded), key destroyed (Kafka).
    assert b"12-34-56" not in stream_bytes(client)
    with pytest.raises(ConflictError, match="forgotten"):
        client.log("The safe combination is 12-34-56.", tenant="alice", id="safe")
    # A fresh client replaying the stream from scratch does not bring it back.
    client.close()
    for f in (client.settings.data_dir / "buffer").glob("buffer.sqlite3*"):
        f.unlink()
    fresh = open_client()
    assert [h.experience.id for h in fresh.recall("safe", tenant="alice")] == ["plants"]


def test_sync_repairs_what_the_buffer_missed(open_client: ClientFactory) -> None:
    """An experience acknowledged by the stream whose buffer write never happened (a crash in
    between) is recallable after the next open, once."""
    client = open_client()
    from reverie.memory.experience import make_experience

    orphan = make_experience("The boiler service is booked for 9 May.", tenant="alice", id="b")
    client.stream.append([StreamRecord.logged(orphan)])
    client.close()
    reopened = open_client()
    assert reopened.recall("when is the boiler service", tenant="alice")[0].experience == orphan
    assert reopened.sync() == 0
    assert reopened.status()["tenants"]["alice"]["total"] == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.recall("", tenant="alice"), "query"),
        (lambda c: c.recall("x", tenant="alice", k=0), "k"),
        (lambda c: c.recall("x", tenant="no spaces"), "tenant"),
        (lambda c: c.log("x", tenant="alice", metadata={"k": {1, 2}}), "metadata"),
        (lambda c: c.log_many("not a list", tenant="alice"), "items"),
    ],
)
def test_bad_arguments_name_the_field(
    open_client: ClientFactory, call: Callable[[MemoryClient], object], field: str
) -> None:
    client = open_client()
    with pytest.raises(InvalidInputError) as info:
        call(client)
    assert info.value.field == field


def test_one_tenants_damaged_adapter_pointer_does_not_break_status(
    open_client: ClientFactory,
) -> None:
    client = open_client()
    client.log("Alice's fact.", tenant="alice")
    client.log("Bob's fact.", tenant="bob")
    bob = client.settings.data_dir / "adapters" / "bob"
    bob.mkdir(parents=True)
    (bob / "current.json").write_text("garbage")
    tenants = client.status()["tenants"]
    assert tenants["alice"]["adapter"] is None and "error" not in tenants["alice"]
    assert "adapters promote --tenant bob" in tenants["bob"]["error"]


def test_list_pages_through_a_tenants_experiences_with_filters(
    open_client: ClientFactory,
) -> None:
    client = open_client()
    days = [f"2026-03-{d:02d}T09:00:00+00:00" for d in range(1, 8)]
    for i, day in enumerate(days):
        client.log(f"Diary entry number {i}.", tenant="alice", id=f"d{i}", created_at=day)
    client.log("Bob's note.", tenant="bob")
    client.buffer.mark("alice", ["d1", "d2"], "consolidated", version="v0001")

    seen, cursor = [], None
    while True:
        page = client.list_experiences(tenant="alice", limit=3, cursor=cursor)
        seen += [s.experience.id for s in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"d{i}" for i in range(7)]  # logging order, each once, no other tenant
    consolidated = client.list_experiences(tenant="alice", status="consolidated")
    assert [s.experience.id for s in consolidated.items] == ["d1", "d2"]
    window = client.list_experiences(tenant="alice", since="2026-03-03", until="2026-03-05T09:00Z")
    assert [s.experience.id for s in window.items] == ["d2", "d3"]
    assert window.items[0].experience.created_at.isoformat() == days[2]
    for bad in ({"status": "done"}, {"limit": 0}, {"cursor": "x"}, {"since": "yesterday"}):
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            client.list_experiences(tenant="alice", **bad)  # type: ignore[arg-type]


def test_update_replaces_a_revision_and_survives_a_replay(open_client: ClientFactory) -> None:
    client = open_client()
    client.log("The spare key is under the blue flowerpot.", tenant="alice", id="key")
    client.log("The plants need water on Sundays.", tenant="alice", id="plants")
    new = client.update("key", "The spare key is now in the mailbox.", tenant="alice")
    assert new.id == "key" and client.get("key", tenant="alice").experience.text == new.text
    hit = client.recall("where is the spare key", tenant="alice", k=1)[0]
    assert (
        hit.experience.text == "The spare key is now in the mailbox." and hit.status == "buffered"
    )
    assert client.update("key", new.text, tenant="alice").created_at == new.created_at  # same
    with pytest.raises(NotFoundError):
        client.update("nope", "Anything.", tenant="alice")
    assert b"blue flowerpot" not in stream_bytes(client)  # the old revision is unreadable
    # A fresh buffer rebuilt from the stream alone holds the new revision, once.
    client.close()
    for f in (client.settings.data_dir / "buffer").glob("buffer.sqlite3*"):
        f.unlink()
    again = open_client()
    assert [s.experience.text for s in again.list_experiences(tenant="alice").items] == [
        "The plants need water on Sundays.",
        "The spare key is now in the mailbox.",
    ]


def test_async_client_has_the_same_methods_and_runs_them_concurrently(
    open_client: ClientFactory,
) -> None:
    import asyncio
    import inspect

    from reverie import AsyncMemoryClient
    from reverie.memory.errors import NotFoundError

    public = {
        n for n, f in inspect.getmembers(MemoryClient, inspect.isfunction) if not n.startswith("_")
    }
    missing = public - set(dir(AsyncMemoryClient)) - {"sync", "load_model"}
    assert not missing, missing

    async def scenario() -> None:
        async with AsyncMemoryClient(client=open_client()) as memory:
            texts = [f"Fact number {i} is about the colour {c}." for i, c in
                     enumerate(["red", "green", "blue", "amber"])]  # fmt: skip
            logged = await asyncio.gather(*(memory.log(t, tenant="alice") for t in texts))
            assert sorted(e.text for e in logged) == sorted(texts)
            hits = await memory.recall("which fact is about blue", tenant="alice", k=1)
            assert hits[0].experience.text == texts[2]
            page = await memory.list_experiences(tenant="alice")
            assert len(page.items) == 4
            await memory.forget(logged[0].id, tenant="alice")
            try:
                await memory.get(logged[0].id, tenant="alice")
            except NotFoundError:
                pass
            else:
                raise AssertionError("a forgotten experience is still there")
            assert (await memory.status())["tenants"]["alice"]["total"] == 3

    asyncio.run(scenario())
