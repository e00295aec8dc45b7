"""A LlamaIndex memory block backed by Reverie (``llama_index.core.memory.Memory``).

    from llama_index.core.memory import Memory
    from reverie.agent.llamaindex_memory import ReverieMemoryBlock

    memory = Memory.from_defaults(
        session_id="chat-1",
        memory_blocks=[ReverieMemoryBlock(tenant="alice")],   # settings from the environment
    )

Messages that leave LlamaIndex's short-term memory (its token budget flushes the oldest) are
logged as the tenant's experiences: recallable at once, consolidated into the tenant's adapter by
the daemon. Each time the memory is read, the experiences closest to the latest user message are
recalled and given to the model in the memory block. ``client`` is any Reverie client with
``log_many`` and ``recall`` (``MemoryClient``, ``RemoteMemoryClient``); by default a
``MemoryClient`` on settings from the environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from pydantic import Field, PrivateAttr

from reverie.memory.extras import needs

with needs("llama_index", "llamaindex", "ReverieMemoryBlock", "llama-index-core"):
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.core.memory import BaseMemoryBlock

from reverie.memory.errors import ConflictError
from reverie.memory.experience import validate_tenant

__all__ = ["ReverieMemoryBlock"]

logger = logging.getLogger(__name__)


class ReverieMemoryBlock(BaseMemoryBlock[str]):
    """Long-term memory in Reverie: flushed messages are logged, the closest are recalled."""

    name: str = Field(default="reverie", description="The block's name in the memory template.")
    description: str | None = Field(
        default="What the user told the assistant in earlier conversations, recalled by meaning.",
        description="What the block holds.",
    )
    tenant: str = Field(description="The Reverie tenant whose memory this is.")
    k: int = Field(default=3, ge=1, le=50, description="Experiences recalled per read.")
    min_score: float = Field(
        default=0.25, ge=-1.0, le=1.0, description="Cosine similarity a recalled experience needs."
    )
    roles: tuple[str, ...] = Field(
        default=("user",),
        description="Roles whose flushed messages are logged (by default what the user said; "
        "add 'assistant' to keep the assistant's replies too).",
    )
    _client: Any = PrivateAttr(default=None)

    def __init__(self, client: Any = None, **data: Any) -> None:
        super().__init__(**data)
        validate_tenant(self.tenant)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from reverie.agent.client import MemoryClient

            self._client = MemoryClient()
        return self._client

    async def _aget(self, messages: list[ChatMessage] | None = None, **kwargs: Any) -> str:
        query = next(
            (
                m.content
                for m in reversed(messages or [])
                if m.role == MessageRole.USER and m.content
            ),
            None,
        )
        if not query:
            return ""
        hits = await asyncio.to_thread(self.client.recall, query, tenant=self.tenant, k=self.k)
        return "\n".join(f"- {h.experience.text}" for h in hits if h.score >= self.min_score)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        items = []
        for m in messages:
            role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
            text = (m.content or "").strip()
            if role not in self.roles or not text:
                continue
            session = m.additional_kwargs.get("session_id")
            key = hashlib.sha256(f"{session}\0{role}\0{text}".encode()).hexdigest()[:24]
            metadata = {"role": role} | ({"session_id": str(session)} if session else {})
            items.append(
                {"id": f"li-{key}", "text": text, "source": "llamaindex", "metadata": metadata}
            )
        # One at a time: a message flushed again after it was forgotten is refused (ConflictError)
        # and must not take the others with it. The same message twice is one experience.
        for item in items:
            try:
                await asyncio.to_thread(self.client.log_many, [item], tenant=self.tenant)
            except ConflictError:
                logger.info("not logged again: %s was forgotten or changed", item["id"])
