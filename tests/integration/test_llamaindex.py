"""ReverieMemoryBlock inside LlamaIndex's own ``Memory``: messages flushed from the short-term
queue become the tenant's experiences, and reading the memory recalls the closest ones."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import Memory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from reverie.agent.client import MemoryClient
from reverie.agent.llamaindex_memory import ReverieMemoryBlock
from reverie.memory.errors import InvalidInputError
from reverie.settings import load_settings


# LlamaIndex runs its sync calls on the main thread's event loop, creating one (and leaving it
# open) if there is none: close it after each test, or it is collected during a later test and
# reported there as unclosed sockets.
@pytest.fixture(autouse=True)
def _close_the_loop_llamaindex_opened() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:  # none (this test opened none)
            return
    loop.close()
    asyncio.set_event_loop(None)


TOLD = [
    "My dog Biscuit is allergic to salmon.",
    "I keep my boat at pier 7 in the north harbour.",
    "My sister Ana lives in Porto and teaches chemistry.",
    "The wifi password at the cabin is written under the kettle.",
]


def _memory(block: ReverieMemoryBlock, session: str, db: Path) -> Memory:
    # Whitespace tokens (LlamaIndex's default tokenizer downloads its vocabulary); a small
    # budget, so older turns are flushed to the block as the conversation goes on. The chat
    # history in a file, each session opening and closing its own connection (NullPool).
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}", poolclass=NullPool)
    return Memory.from_defaults(
        session_id=session,
        async_engine=engine,
        token_limit=60,
        chat_history_token_ratio=0.5,
        token_flush_size=12,
        tokenizer_fn=str.split,
        memory_blocks=[block],
    )


def test_flushed_messages_become_experiences_and_reads_recall_them(
    tmp_path: Path, embedder: Any
) -> None:
    client = MemoryClient(load_settings(data_dir=tmp_path / "data"), embedder=embedder)
    memory = _memory(ReverieMemoryBlock(client, tenant="alice"), "chat-1", tmp_path / "a.db")
    for text in TOLD:
        memory.put(ChatMessage(role="user", content=text))
        memory.put(ChatMessage(role="assistant", content="Noted, I will remember that."))
    memory.put(ChatMessage(role="user", content="What should Biscuit never eat?"))

    logged = client.list_experiences(tenant="alice").items
    texts = [s.experience.text for s in logged]
    assert texts and set(texts) <= set(TOLD)  # what the user said, not the assistant's replies
    assert TOLD[0] in texts  # the oldest turns were flushed first
    assert all(s.experience.source == "llamaindex" for s in logged)
    assert all(s.experience.metadata["session_id"] == "chat-1" for s in logged)

    history = memory.get()
    system = history[0]
    assert system.role == "system" and "salmon" in (system.content or "")
    assert history[-1].content == "What should Biscuit never eat?"

    # Flushing the same turn again (another Memory over the same session) adds nothing.
    before = len(logged)
    again = _memory(ReverieMemoryBlock(client, tenant="alice"), "chat-1", tmp_path / "b.db")
    for text in TOLD[:2]:
        again.put(ChatMessage(role="user", content=text))
        again.put(ChatMessage(role="assistant", content="Noted, I will remember that."))
    again.put(ChatMessage(role="user", content="ok"))
    assert len(client.list_experiences(tenant="alice").items) == before

    # Another tenant's block recalls nothing of alice's.
    bob = _memory(ReverieMemoryBlock(client, tenant="bob"), "chat-2", tmp_path / "c.db")
    bob.put(ChatMessage(role="user", content="What should Biscuit never eat?"))
    assert "salmon" not in (bob.get()[0].content or "")
    client.close()


def test_a_bad_tenant_is_refused_at_construction(tmp_path: Path, embedder: Any) -> None:
    client = MemoryClient(load_settings(data_dir=tmp_path / "data"), embedder=embedder)
    with pytest.raises(InvalidInputError, match="tenant"):
        ReverieMemoryBlock(client, tenant="../etc")
    client.close()
