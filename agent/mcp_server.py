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

from reverie.memory.extras import needs

with needs("mcp", "mcp", "the MCP server"):
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from reverie.agent.client import MemoryClient
from reverie.memory.errors import ReverieError

__all__ = ["INSTRUCTIONS", "build_server", "http_app"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Reverie is the user's long-term memory. Store facts worth keeping with remember (one fact "
    "per call, in a full sentence). Before answering a question about the user, their work or "
    "anything they told you earlier, search with recall. ask answers from memory in one step. "
    "forget erases a memory everywhere. Memories are private to this user."
)


def build_server(
    client: MemoryClient,
    tenant_of: Callable[[Any], str],
    fixed_tenant: str | None = None,
) -> Any:
    """An ``MCPServer`` with Reverie's tools; ``tenant_of(ctx)`` names the caller's tenant from
    the tool call's context (``fixed_tenant`` for stdio, the bearer token's for HTTP)."""
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
    def remember(ctx: Context, text: str, source: str | None = None) -> dict[str, Any]:
        exp = call(lambda: client.log(text, tenant=tenant_of(ctx), source=source))
        return {"id": exp.id, "created_at": exp.created_at.isoformat()}

    @server.tool(
        description="Search long-term memory for the memories closest in meaning to a query "
        "(e.g. 'when is rent due'). Returns up to k memories with similarity scores (0-1)."
    )
    def recall(ctx: Context, query: str, k: int = 5) -> list[dict[str, Any]]:
        hits = call(lambda: client.recall(query, tenant=tenant_of(ctx), k=k))
        return [
            {"id": h.experience.id, "text": h.experience.text, "score": round(h.score, 4)}
            for h in hits
        ]

    @server.tool(
        description="Answer a question from the user's memory in one step: the memory model "
        "answers with its consolidated knowledge and the most relevant memories in context."
    )
    def ask(ctx: Context, question: str) -> dict[str, Any]:
        who = tenant_of(ctx)
        reply = call(lambda: client.chat([{"role": "user", "content": question}], tenant=who))
        return {"answer": reply.text, "memories_used": list(reply.recalled_ids)}

    @server.tool(
        description="Erase one memory by id, everywhere: search, stored files, and the "
        "consolidated weights (answers stop coming from weights that learned it at once). Use "
        "when the user asks you to forget something."
    )
    def forget(ctx: Context, id: str) -> dict[str, Any]:
        erased = call(lambda: client.forget(id, tenant=tenant_of(ctx)))
        return {"forgotten": id, "adapter_versions_erased": erased}

    @server.tool(
        description="List stored memories, oldest first, a page at a time (pass the returned "
        "next_cursor to continue). status: buffered, consolidated or unconsolidated."
    )
    def list_memories(
        ctx: Context,
        limit: int = 20,
        cursor: str | None = None,
        status: Literal["buffered", "consolidated", "unconsolidated"] | None = None,
    ) -> dict[str, Any]:
        page = call(
            lambda: client.list_experiences(
                tenant=tenant_of(ctx), limit=limit, cursor=cursor, status=status
            )
        )
        return {
            "memories": [
                {"id": s.experience.id, "text": s.experience.text, "status": s.status}
                for s in page.items
            ],
            "next_cursor": page.next_cursor,
        }

    @server.tool(
        description="Whose memory this is (the tenant), how many memories it holds and how many "
        "are consolidated into the model's weights."
    )
    def status(ctx: Context) -> dict[str, Any]:
        tenant = tenant_of(ctx)
        counts = client.status()["tenants"].get(tenant) or {
            "total": 0, "buffered": 0, "consolidated": 0, "unconsolidated": 0,
        }  # fmt: skip
        return {"tenant": tenant, **counts}

    def report_for(tenant: str) -> str:
        from reverie.consolidator.report import load_report, to_markdown

        report = load_report(client.registry, tenant)
        if not report["versions"]:
            return "No adapter versions yet: nothing has been consolidated.\n"
        return str(to_markdown(report))

    description = "What consolidation kept and forgot, per fact and per adapter version."
    if fixed_tenant is not None:  # stdio: one tenant, one static resource

        @server.resource(
            "reverie://report/retention", name="retention report", description=description,
            mime_type="text/markdown",
        )  # fmt: skip
        def retention_report() -> str:
            return report_for(fixed_tenant)

    else:  # HTTP: the caller's own tenant only

        @server.resource(
            "reverie://{tenant}/report/retention", name="retention report",
            description=description + " {tenant} is your tenant (the status tool names it).",
            mime_type="text/markdown",
        )  # fmt: skip
        def tenant_report(tenant: str, ctx: Context) -> str:
            if tenant != tenant_of(ctx):
                raise ResourceError("a token reads its own tenant's report only")
            return report_for(tenant)

    return server


def bearer_tenant(ctx: Any) -> str:
    """The tenant of the HTTP request behind a tool call (its bearer token, checked by
    :func:`http_app` before the call reaches the server)."""
    request = ctx.request_context.request
    tenant = getattr(getattr(request, "state", None), "tenant", None)
    if not tenant:
        raise ToolError("a valid bearer token is required")
    return str(tenant)


def http_app(client: MemoryClient) -> Any:
    """Streamable HTTP: every request must carry ``Authorization: Bearer <token>`` (tokens from
    ``reverie tokens create``); the token names the tenant, as in ``reverie serve``."""
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Receive, Scope, Send

    from reverie.agent.auth import TokenStore

    tokens = TokenStore(client.settings.data_dir)
    inner: ASGIApp = build_server(client, bearer_tenant).streamable_http_app(
        stateless_http=True, json_response=True
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode().partition(" ")
            tenant = tokens.tenant_for(token.strip()) if scheme.lower() == "bearer" else None
            if tenant is None:
                denied = JSONResponse(
                    {"error": {"message": "a valid bearer token is required"}}, status_code=401
                )
                await denied(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant
        await inner(scope, receive, send)

    return app
