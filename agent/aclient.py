"""``AsyncMemoryClient``: the same methods as :class:`MemoryClient`, awaitable.

Every call runs the synchronous client's method in a worker thread (``asyncio.to_thread``), so
an async agent's event loop never blocks on an embedding, a stream append or a generation. The
synchronous client is safe to share between threads: the buffer and the model hold their own
locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from reverie.agent.chat import RecallMode, Reply
from reverie.agent.client import LogItem, MemoryClient, Page
from reverie.memory.buffer import Hit, Status, StoredExperience
from reverie.memory.experience import Experience
from reverie.settings import Settings

__all__ = ["AsyncMemoryClient"]


class AsyncMemoryClient:
    """``async with AsyncMemoryClient() as memory: await memory.log(...)``."""

    def __init__(self, settings: Settings | None = None, *, client: MemoryClient | None = None):
        """Wraps ``client``, or a new :class:`MemoryClient` over ``settings`` (opening it loads
        nothing heavy: the embedder and the model load on first use)."""
        self.client = client or MemoryClient(settings)

    async def log(self, text: str, *, tenant: str, **fields: Any) -> Experience:
        return await asyncio.to_thread(self.client.log, text, tenant=tenant, **fields)

    async def log_many(self, items: Sequence[LogItem], *, tenant: str) -> list[Experience]:
        return await asyncio.to_thread(self.client.log_many, items, tenant=tenant)

    async def update(self, id: str, text: str, *, tenant: str, **fields: Any) -> Experience:
        return await asyncio.to_thread(self.client.update, id, text, tenant=tenant, **fields)

    async def forget(self, id: str, *, tenant: str, prove: bool | None = None) -> list[str]:
        return await asyncio.to_thread(self.client.forget, id, tenant=tenant, prove=prove)

    async def erasures(self, tenant: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.client.erasures, tenant)

    async def retention_report(self, tenant: str, *, format: str = "json") -> Any:
        return await asyncio.to_thread(self.client.retention_report, tenant, format=format)

    async def delete_tenant(self, tenant: str) -> dict[str, int]:
        return await asyncio.to_thread(self.client.delete_tenant, tenant)

    async def recall(self, query: str, *, tenant: str, k: int = 5) -> list[Hit]:
        return await asyncio.to_thread(self.client.recall, query, tenant=tenant, k=k)

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tenant: str,
        recall: bool | RecallMode = "all",
        k: int = 3,
        **options: Any,
    ) -> Reply:
        return await asyncio.to_thread(
            self.client.chat, messages, tenant=tenant, recall=recall, k=k, **options
        )

    async def list_experiences(
        self,
        *,
        tenant: str,
        status: Status | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return await asyncio.to_thread(
            self.client.list_experiences,
            tenant=tenant,
            status=status,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    async def get(self, id: str, *, tenant: str) -> StoredExperience:
        return await asyncio.to_thread(self.client.get, id, tenant=tenant)

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.status)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncMemoryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
