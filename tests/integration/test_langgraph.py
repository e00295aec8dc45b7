"""ReverieStore inside a real compiled LangGraph graph: nodes write and read memories."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import pytest

pytest.importorskip("langgraph")

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

from reverie.agent.client import MemoryClient
from reverie.agent.langgraph_store import ReverieStore
from reverie.settings import load_settings


class State(TypedDict, total=False):
    user: str
    fact: str
    question: str
    found: list[str]


def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
    namespace = (state["user"], "memories")
    key = f"fact-{len(store.search(namespace, limit=100))}"
    store.put(namespace, key, {"text": state["fact"], "kind": "fact"})
    return {}


def recall(state: State, *, store: BaseStore) -> dict[str, Any]:
    hits = store.search((state["user"], "memories"), query=state["question"], limit=1)
    return {"found": [h.value["text"] for h in hits]}


def test_a_compiled_graph_writes_and_reads_memories(tmp_path: Path, embedder: Any) -> None:
    client = MemoryClient(load_settings(data_dir=tmp_path / "data"), embedder=embedder)
    store = ReverieStore(client)
    graph = StateGraph(State)
    graph.add_node("remember", remember)
    graph.add_node("recall", recall)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", "recall")
    graph.add_edge("recall", END)
    app = graph.compile(store=store)
    facts = ["The boat is at pier 7.", "Rent is due on the 3rd.", "Biscuit hates salmon."]
    for fact in facts:
        out = app.invoke({"user": "alice", "fact": fact, "question": "where is the boat"})
    assert out["found"] == ["The boat is at pier 7."]
    app.invoke({"user": "bob", "fact": "Bob's boat is blue.", "question": "boat"})

    # The store's own surface, as a LangGraph user calls it.
    ns = ("alice", "memories")
    assert {i.value["text"] for i in store.search(ns)} == set(facts)
    assert [i.value["text"] for i in store.search(("bob",))] == ["Bob's boat is blue."]
    assert store.search(ns, filter={"kind": "fact"}, limit=2, offset=1)[0].value["kind"] == "fact"
    item = store.get(ns, "fact-0")
    assert item is not None and item.value == {"text": facts[0], "kind": "fact"}
    store.put(ns, "fact-0", {"text": "The boat is at pier 9.", "kind": "fact"})
    assert store.get(ns, "fact-0").value["text"] == "The boat is at pier 9."  # type: ignore[union-attr]
    assert client.status()["tenants"]["alice"]["total"] == 3  # replaced, not duplicated
    store.put(("alice", "notes"), "n1", {"content": "Call mum on Sunday."})
    assert store.search(("alice", "memories"), query="call mum") != []  # recall is per tenant...
    assert all(i.namespace == ns for i in store.search(ns, query="call mum"))  # ...filtered by ns
    assert store.list_namespaces() == [("alice", "memories"), ("alice", "notes"),
                                       ("bob", "memories")]  # fmt: skip
    assert store.list_namespaces(prefix=("alice",), max_depth=1) == [("alice",)]
    store.delete(ns, "fact-0")
    assert store.get(ns, "fact-0") is None
    client.close()
