"""Reverie as an MCP server: long-term memory tools for any agent that speaks MCP.

``reverie mcp --tenant T`` serves one tenant over stdio (the way desktop agents and IDEs launch
tools); ``reverie mcp --http`` serves streamable HTTP, where each request's bearer token names
its tenant as in ``reverie serve``. Built on the official ``mcp`` SDK (``MCPServer``); every tool
is a thin call into :class:`~reverie.agent.client.MemoryClient`, so the memory semantics (durable
on return, recallable at once, forget erases) are the same as in the Python client and the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from reverie.agent.client import MemoryClient
from reverie.memory.errors import ReverieError

__all__ = ["INSTRUCTIONS", "build_server"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Reverie is the user's long-term memory. Store facts worth keeping with remember (one fact "
    "per call, in a full sentence). Before answering a question about the user, their work or "
    "anything they told you earlier, search with recall. ask answers from memory in one step. "
    "forget erases a memory everywhere. Memories are private to this user."
)


def build_server(client: MemoryClient, tenant: Callable[[], str]) -> Any:
    """An ``MCPServer`` with Reverie's tools; ``tenant()`` names the caller's tenant (fixed
    for stdio, the bearer token's for HTTP)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(name="reverie", instructions=INSTRUCTIONS)

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ReverieError as err:  # a clear message the model can act on, not a traceback
            raise ToolError(str(err)) from None

    @server.tool(
        description="Store one fact or experience in long-term memory (durable and searchable "
        "as soon as this returns). Use a full sentence, e.g. 'The user's landlord is Teodor "
        "Vasquez; rent is due on the 3rd.' Returns the memory's id."
    )
    def remember(text: str, source: str | None = None) -> dict[str, Any]:
        exp = call(lambda: client.log(text, tenant=tenant(), source=source))
        return {"id": exp.id, "created_at": exp.created_at.isoformat()}

    @server.tool(
        description="Search long-term memory for the memories closest in meaning to a query "
        "(e.g. 'when is rent due'). Returns up to k memories with similarity scores (0-1)."
    )
    def recall(query: str, k: int = 5) -> list[dict[str, Any]]:
        hits = call(lambda: client.recall(query, tenant=tenant(), k=k))
        return [
            {"id": h.experience.id, "text": h.experience.text, "score": round(h.score, 4)}
            for h in hits
        ]

    @server.tool(
        description="Answer a question from the user's memory in one step: the memory model "
        "answers with its consolidated knowledge and the most relevant memories in context."
    )
    def ask(question: str) -> dict[str, Any]:
        reply = call(lambda: client.chat([{"role": "user", "content": question}], tenant=tenant()))
        return {"answer": reply.text, "memories_used": list(reply.recalled_ids)}

    @server.tool(
        description="Erase one memory by id, everywhere: search, stored files, and the "
        "consolidated weights (answers stop coming from weights that learned it at once). Use "
        "when the user asks you to forget something."
    )
    def forget(id: str) -> dict[str, Any]:
        erased = call(lambda: client.forget(id, tenant=tenant()))
        return {"forgotten": id, "adapter_versions_erased": erased}

    @server.tool(
        description="List stored memories, oldest first, a page at a time (pass the returned "
        "next_cursor to continue). status: buffered, consolidated or unconsolidated."
    )
    def list_memories(
        limit: int = 20,
        cursor: str | None = None,
        status: Literal["buffered", "consolidated", "unconsolidated"] | None = None,
    ) -> dict[str, Any]:
        page = call(
            lambda: client.list_experiences(
                tenant=tenant(), limit=limit, cursor=cursor, status=status
            )
        )
        return {
            "memories": [
                {"id": s.experience.id, "text": s.experience.text, "status": s.status}
                for s in page.items
            ],
            "next_cursor": page.next_cursor,
        }

    @server.tool(description="How many memories this user has, and how many are consolidated.")
    def status() -> dict[str, Any]:
        counts = client.status()["tenants"].get(tenant())
        return counts or {"total": 0, "buffered": 0, "consolidated": 0, "unconsolidated": 0}

    @server.resource(
        "reverie://report/retention",
        name="retention report",
        description="What consolidation kept and forgot, per fact and per adapter version.",
        mime_type="text/markdown",
    )
    def retention_report() -> str:
        from reverie.consolidator.report import load_report, to_markdown

        report = load_report(client.registry, tenant())
        if not report["versions"]:
            return "No adapter versions yet: nothing has been consolidated.\n"
        return str(to_markdown(report))

    return server
