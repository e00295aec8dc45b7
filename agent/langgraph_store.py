"""``ReverieStore``: LangGraph's long-term memory store (``BaseStore``) backed by Reverie.

A LangGraph graph compiled with ``store=ReverieStore()`` writes memories with
``store.put(namespace, key, value)`` and finds them with ``store.search(namespace, query=...)``;
each item is a Reverie experience, so it is durable at once, recalled by meaning, and
consolidated into the tenant's adapter like any other.

Namespaces: the first element is the tenant (LangGraph's usual ``(user_id, "memories")``); the
full namespace and the key identify the item. A namespace never sees another's items: a search
filters by namespace prefix inside the tenant, and tenants never share anything. The item's value
is kept whole in the experience's metadata; its text (``value["text"]``, ``"content"``,
``"memory"`` or ``"data"``, else the value as JSON) is what is embedded and consolidated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from reverie.memory.extras import needs

with needs("langgraph", "langgraph", "ReverieStore"):
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        Item,
        ListNamespacesOp,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
    )

from reverie.agent.client import MemoryClient
from reverie.memory.errors import InvalidInputError, NotFoundError
from reverie.memory.experience import Experience, validate_tenant

__all__ = ["ReverieStore"]

_TEXT_FIELDS = ("text", "content", "memory", "data")
_RECALL_MAX = 100


def _item_id(namespace: tuple[str, ...], key: str) -> str:
    digest = hashlib.sha256(json.dumps([list(namespace), key]).encode()).hexdigest()
    return f"lg-{digest[:40]}"


def _text(value: Mapping[str, Any]) -> str:
    for field in _TEXT_FIELDS:
        if isinstance(value.get(field), str) and value[field].strip():
            return str(value[field])
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _tenant(namespace: tuple[str, ...]) -> str:
    if not namespace:
        raise InvalidInputError("namespace", "give at least one element: the tenant, e.g. (user,)")
    return validate_tenant(namespace[0])


def _under(namespace: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return namespace[: len(prefix)] == prefix


def _matches(value: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    return all(value.get(k) == v for k, v in (wanted or {}).items())


class ReverieStore(BaseStore):
    """``ReverieStore()`` (settings from the environment) or ``ReverieStore(client)``."""

    def __init__(self, client: MemoryClient | None = None) -> None:
        self.client = client or MemoryClient()

    # -- one operation each ----------------------------------------------------------------
    def _item(self, exp: Experience, cls: type[Item] = Item, **extra: Any) -> Any:
        meta = exp.metadata
        return cls(
            namespace=tuple(meta["lg_namespace"]),  # type: ignore[arg-type]
            key=str(meta["lg_key"]),
            value=dict(meta["lg_value"]),  # type: ignore[arg-type]
            created_at=exp.created_at,
            updated_at=exp.created_at,  # a put of new content is a new revision
            **extra,
        )

    def _get(self, op: GetOp) -> Item | None:
        try:
            stored = self.client.get(_item_id(op.namespace, op.key), tenant=_tenant(op.namespace))
        except NotFoundError:
            return None
        return self._item(stored.experience)

    def _put(self, op: PutOp) -> None:
        tenant, eid = _tenant(op.namespace), _item_id(op.namespace, op.key)
        if op.value is None:
            with contextlib.suppress(NotFoundError):
                self.client.forget(eid, tenant=tenant)
            return
        meta = {"lg_namespace": list(op.namespace), "lg_key": op.key, "lg_value": op.value}
        try:
            current = self.client.get(eid, tenant=tenant).experience
        except NotFoundError:
            self.client.log(_text(op.value), tenant=tenant, id=eid, metadata=meta)
            return
        if current.metadata.get("lg_value") != op.value:
            self.client.update(eid, _text(op.value), tenant=tenant, metadata=meta)

    def _all(self, tenant: str) -> list[Experience]:
        out, cursor = [], None
        while True:
            page = self.client.list_experiences(tenant=tenant, limit=1000, cursor=cursor)
            out += [s.experience for s in page.items if "lg_namespace" in s.experience.metadata]
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    def _search(self, op: SearchOp) -> list[SearchItem]:
        tenant, prefix = _tenant(op.namespace_prefix), tuple(op.namespace_prefix)

        def keep(exp: Experience) -> bool:
            meta = exp.metadata
            if "lg_namespace" not in meta:
                return False
            value = meta["lg_value"]
            namespace = tuple(meta["lg_namespace"])  # type: ignore[arg-type]
            return _under(namespace, prefix) and _matches(value, op.filter)  # type: ignore[arg-type]

        wanted = op.offset + op.limit
        found: list[tuple[Experience, float | None]]
        if op.query:
            hits = self.client.recall(op.query, tenant=tenant, k=_RECALL_MAX)
            found = [(h.experience, h.score) for h in hits if keep(h.experience)]
        else:
            found = [(e, None) for e in self._all(tenant) if keep(e)]
        return [self._item(e, SearchItem, score=s) for e, s in found[op.offset : wanted]]

    def _namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        tenants = list(self.client.status()["tenants"])
        for condition in op.match_conditions or ():
            if condition.match_type == "prefix" and condition.path and condition.path[0] != "*":
                tenants = [t for t in tenants if t == condition.path[0]]
        found: set[tuple[str, ...]] = set()
        for tenant in tenants:
            for exp in self._all(tenant):
                namespace = tuple(str(p) for p in exp.metadata["lg_namespace"])  # type: ignore[union-attr]
                if all(_condition(namespace, c) for c in op.match_conditions or ()):
                    found.add(namespace[: op.max_depth] if op.max_depth else namespace)
        return sorted(found)[op.offset : op.offset + op.limit]

    # -- BaseStore -------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._namespaces(op))
            else:
                raise InvalidInputError("op", f"unknown store operation {type(op).__name__}")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))


def _condition(namespace: tuple[str, ...], condition: Any) -> bool:
    path = tuple(condition.path)
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return len(part) == len(path) and all(p in ("*", n) for p, n in zip(path, part, strict=True))
