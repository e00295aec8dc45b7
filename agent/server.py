"""``reverie serve``: the HTTP API (FastAPI), including an OpenAI-compatible chat endpoint.

Every route but ``/healthz`` and ``/metrics`` needs ``Authorization: Bearer <token>``; the token
names the tenant, so a request can only ever read or change that tenant's data (no token: 401;
another tenant's ids are simply not found: 404). Requests over ``max_request_bytes`` get 413.
Errors are JSON in OpenAI's shape: ``{"error": {"message", "type", "field"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException

from reverie.agent.auth import TokenStore
from reverie.agent.chat import RECALL_WINDOW, Reply
from reverie.agent.client import MemoryClient
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    ReverieError,
)

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExperienceIn(_Body):
    text: str
    id: str | None = None
    source: str | None = None
    metadata: dict[str, JsonValue] | None = None
    created_at: str | None = None


class ExperiencesIn(_Body):
    """One experience (``text`` ...) or a batch (``items``)."""

    text: str | None = None
    id: str | None = None
    source: str | None = None
    metadata: dict[str, JsonValue] | None = None
    created_at: str | None = None
    items: list[ExperienceIn] | None = Field(default=None, max_length=1000)


class RecallIn(_Body):
    query: str
    k: int = 5


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


# OpenAI request fields this endpoint cannot honour: refused with a 400 naming them, never
# silently ignored (a client relying on tool calls or JSON mode must know at once).
_UNSUPPORTED = {
    "tools": "tool calling is not supported; call tools in your agent and send their results "
    "back as role 'tool' messages",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logprobs": "log-probabilities are not returned",
    "audio": "audio output is not supported",
}


class ChatIn(BaseModel):
    """OpenAI's chat completion request. Fields it cannot honour (tools, JSON modes, n > 1,
    logprobs...) are refused with a 400 naming them; other unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = "reverie"
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2048)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    response_format: dict[str, Any] | None = None

    def refusal(self) -> tuple[str, str] | None:
        """The first field this endpoint cannot honour, with why (None: all can be)."""
        extra = self.model_extra or {}
        for name, why in _UNSUPPORTED.items():
            if extra.get(name) not in (None, False, [], {}):
                return name, why
        if self.n != 1:
            return "n", "one choice per request (n = 1); send several requests for more"
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            return "response_format", f"only type 'text' is supported, got {kind!r}"
        return None

    # Reverie's extension: which memories go in the prompt (true = "all", false = "none")
    recall: bool | Literal["all", "unconsolidated", "none"] = "all"
    k: int = Field(default=3, ge=0, le=20)
    window: float = Field(
        default=RECALL_WINDOW,
        ge=0,
        le=2,
        strict=True,
        description="Recall only memories within this cosine of the closest (2: all k).",
    )


class RollbackIn(_Body):
    version: str | None = None


def _tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant named by the request's bearer token (401 without a valid one)."""
    scheme, _, token = (authorization or "").partition(" ")
    store: TokenStore = request.app.state.tokens
    tenant = store.tenant_for(token.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise StarletteHTTPException(401, "a valid bearer token is required")
    return tenant


Tenant = Annotated[str, Depends(_tenant)]


def _error(status: int, message: str, kind: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "field": field}}, status_code=status
    )


def create_app(
    client: MemoryClient,
    *,
    tokens: TokenStore | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    """The API over one :class:`MemoryClient` (its settings name the data dir)."""
    settings = client.settings
    tokens = tokens or TokenStore(settings.data_dir)
    registry = AdapterRegistry(settings.data_dir / "adapters")
    app = FastAPI(
        title="Reverie",
        version="0.1.0",
        description="Streaming continual-learning memory for LLM agents.",
    )
    app.state.tokens = tokens
    metrics = CollectorRegistry()
    requests = Counter(
        "reverie_http_requests", "HTTP requests", ["route", "status"], registry=metrics
    )
    latency = Histogram("reverie_http_seconds", "HTTP request latency", ["route"], registry=metrics)
    loaded = Gauge("reverie_model_loaded", "1 once the language model is loaded", registry=metrics)
    loaded.set_function(lambda: float(client.model_loaded))
    queue_wait = Histogram(
        "reverie_chat_queue_seconds", "Time a chat waited for the model", registry=metrics
    )
    generated = Counter("reverie_generated_tokens", "Tokens generated by chats", registry=metrics)
    generating = Counter(
        "reverie_generation_seconds", "Seconds spent generating (tokens/s = ratio of rates)",
        registry=metrics,
    )  # fmt: skip
    speed = Gauge(
        "reverie_generation_tokens_per_second", "Tokens/s of the last chat", registry=metrics
    )

    # -- cross-cutting -------------------------------------------------------------------------
    @app.middleware("http")
    async def limits_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_request_bytes):
            return _error(413, f"request body over {max_request_bytes} bytes", "request_too_large")
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_request_bytes:
                    return _error(
                        413, f"request body over {max_request_bytes} bytes", "request_too_large"
                    )
            request._body = body  # starlette reads the buffered body from here
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - start
        requests.labels(name, str(response.status_code)).inc()
        latency.labels(name).observe(seconds)
        logger.info(
            "%s %s %d %.0f ms", request.method, request.url.path, response.status_code,
            seconds * 1000,
            extra={"http": {"method": request.method, "path": request.url.path,
                            "route": name, "status": response.status_code,
                            "ms": round(seconds * 1000, 1)}},
        )  # fmt: skip
        return response

    @app.exception_handler(InvalidInputError)
    async def invalid(_: Request, err: InvalidInputError) -> JSONResponse:
        return _error(400, str(err), "invalid_request_error", err.field)

    @app.exception_handler(ConflictError)
    async def conflict(_: Request, err: ConflictError) -> JSONResponse:
        return _error(409, str(err), "conflict")

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, err: NotFoundError) -> JSONResponse:
        return _error(404, str(err), "not_found")

    @app.exception_handler(IntegrityError)
    async def integrity(_: Request, err: IntegrityError) -> JSONResponse:
        return _error(409, str(err), "integrity_error")

    @app.exception_handler(ReverieError)
    async def failure(_: Request, err: ReverieError) -> JSONResponse:
        return _error(503, str(err), "unavailable")

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return _error(422, f"{field}: {first['msg']}", "invalid_request_error", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found"}.get(err.status_code, "error")
        response = _error(err.status_code, str(err.detail), kind)
        if err.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    # -- memory ----------------------------------------------------------------------------------
    @app.post("/v1/experiences", status_code=201)
    def log_experiences(body: ExperiencesIn, tenant: Tenant) -> dict[str, Any]:
        """Log one experience (``text``...) or a batch (``items``); durable and recallable on
        return. Re-logging an ``id`` is idempotent."""
        if body.items is not None:
            if body.text is not None:
                raise InvalidInputError("items", "give either text or items, not both")
            logged = client.log_many(
                [i.model_dump(exclude_none=True) for i in body.items], tenant=tenant
            )
            return {"experiences": [e.model_dump(mode="json") for e in logged]}
        if body.text is None:
            raise InvalidInputError("text", "give the experience text (or items for a batch)")
        exp = client.log(
            body.text,
            tenant=tenant,
            id=body.id,
            source=body.source,
            metadata=body.metadata,
            created_at=body.created_at,
        )
        return {"experience": exp.model_dump(mode="json")}

    @app.post("/v1/recall")
    def recall(body: RecallIn, tenant: Tenant) -> dict[str, Any]:
        hits = client.recall(body.query, tenant=tenant, k=body.k)
        return {
            "hits": [
                {
                    "score": round(h.score, 5),
                    "status": h.status,
                    "experience": h.experience.model_dump(mode="json"),
                }
                for h in hits
            ]
        }

    @app.get("/v1/experiences")
    def list_experiences(
        tenant: Tenant,
        status: Literal["buffered", "consolidated", "unconsolidated"] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """The token's tenant's experiences in logging order, a page at a time."""
        page = client.list_experiences(
            tenant=tenant, status=status, since=since, until=until, limit=limit, cursor=cursor
        )
        return {
            "experiences": [
                {
                    "experience": s.experience.model_dump(mode="json"),
                    "status": s.status,
                    "version": s.version,
                }
                for s in page.items
            ],
            "next_cursor": page.next_cursor,
        }

    @app.get("/v1/experiences/{experience_id}")
    def get_experience(experience_id: str, tenant: Tenant) -> dict[str, Any]:
        stored = client.get(experience_id, tenant=tenant)
        return {
            "experience": stored.experience.model_dump(mode="json"),
            "status": stored.status,
            "version": stored.version,
        }

    @app.put("/v1/experiences/{experience_id}")
    def update_experience(experience_id: str, body: ExperienceIn, tenant: Tenant) -> dict[str, Any]:
        """Replace the experience by a new revision (the old one is forgotten)."""
        if body.id is not None and body.id != experience_id:
            raise InvalidInputError("id", "the body's id must match the path's, or be left out")
        exp = client.update(
            experience_id,
            body.text,
            tenant=tenant,
            metadata=body.metadata,
            source=body.source,
            created_at=body.created_at,
        )
        return {"experience": exp.model_dump(mode="json")}

    @app.delete("/v1/experiences/{experience_id}")
    def forget(experience_id: str, tenant: Tenant, prove: bool | None = None) -> dict[str, Any]:
        """Erase the experience everywhere; names the adapter versions erased with it and the
        proof (its probe questions answered by the served and by the base model), measured
        once the model is loaded."""
        erased = client.forget(experience_id, tenant=tenant, prove=prove)
        proof = next(
            (e for e in reversed(client.erasures(tenant)) if e.get("id") == experience_id),
            {"proof": None},
        )
        return {"forgotten": experience_id, "erased_versions": erased, "proof": proof["proof"]}

    @app.get("/v1/erasures")
    def erasures(tenant: Tenant) -> dict[str, Any]:
        """The token's tenant's erasure records, oldest first, each with its proof."""
        return {"tenant": tenant, "erasures": client.erasures(tenant)}

    @app.get("/v1/status")
    def status(tenant: Tenant) -> dict[str, Any]:
        """The token's tenant and its counts (total, buffered, consolidated, unconsolidated)
        with its live adapter version."""
        counts = client.status()["tenants"].get(tenant) or {
            "total": 0, "buffered": 0, "consolidated": 0, "unconsolidated": 0, "adapter": None,
        }  # fmt: skip
        return {"tenant": tenant, **counts}

    @app.delete("/v1/tenant")
    def delete_tenant(tenant: Tenant) -> dict[str, Any]:
        """Erase the token's tenant for good: experiences, adapters, and every token of it
        (this one included)."""
        return {"tenant": tenant, **client.delete_tenant(tenant)}

    # -- chat (OpenAI-compatible) ----------------------------------------------------------------
    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatIn, tenant: Tenant) -> dict[str, Any] | StreamingResponse | JSONResponse:
        refused = body.refusal()
        if refused is not None:
            return _error(400, f"{refused[0]}: {refused[1]}", "invalid_request_error", refused[0])
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def answer(
            on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] | None = None,
        ) -> Reply:
            reply = client.chat(
                [{"role": m.role, "content": m.content} for m in body.messages],
                tenant=tenant,
                recall=body.recall,
                k=body.k,
                window=body.window,
                max_new_tokens=body.max_completion_tokens or body.max_tokens,
                temperature=body.temperature or 0.0,
                top_p=body.top_p if body.top_p is not None else 1.0,
                seed=body.seed,
                on_text=on_text,
                should_stop=should_stop,
            )
            queue_wait.observe(reply.queue_seconds)
            generated.inc(reply.completion_tokens)
            generating.inc(reply.generate_seconds)
            if reply.generate_seconds > 0:
                speed.set(reply.completion_tokens / reply.generate_seconds)
            return reply

        if body.stream:
            # Generation runs in a thread and hands each piece to the response as it comes.
            # The first event is awaited here: a request the model cannot answer (a prompt too
            # long...) is a 400 like any other, not a stream that breaks.
            events: queue.Queue[tuple[str, Any]] = queue.Queue()
            gone = threading.Event()  # set when the client disconnects: generation stops

            def run() -> None:
                try:
                    reply = answer(lambda text: events.put(("text", text)), gone.is_set)
                    if gone.is_set():
                        logger.info("chat %s: client gone, stopped after %d tokens", ident,
                                    reply.completion_tokens)  # fmt: skip
                    events.put(("done", reply))
                except Exception as err:  # handed to the request (first) or the stream (later)
                    events.put(("error", err))

            threading.Thread(target=run, name=f"stream-{ident}", daemon=True).start()
            first = events.get()
            if first[0] == "error":
                raise first[1]
            name = client.settings.model.model_name()
            return StreamingResponse(
                _stream(ident, created, name, first, events, gone),
                media_type="text/event-stream",
            )
        reply = answer()
        extra = {
            "adapter_version": reply.adapter_version,
            "routed": reply.routed,
            "adapter_overruled": reply.overruled,
            "recalled_ids": list(reply.recalled_ids),
        }
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": reply.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": reply.finish_reason,
                    "message": {"role": "assistant", "content": reply.text},
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
            "reverie": extra,
        }

    @app.get("/v1/models")
    def models(tenant: Tenant) -> dict[str, Any]:
        """The model that answers (OpenAI's model list): the base model, with the tenant's
        adapter and memory applied to every chat."""
        name = client.settings.model.model_name()
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "reverie"}],
        }

    # -- adapters and reports --------------------------------------------------------------------
    @app.get("/v1/adapters")
    def adapters(tenant: Tenant) -> dict[str, Any]:
        current = registry.current(tenant)
        return {
            "current": current.version if current else None,
            "versions": [
                {
                    "version": v.version,
                    "parent": v.parent,
                    "outcome": v.outcome,
                    "created_at": v.manifest.get("created_at"),
                    "experiences": [e["id"] for e in v.manifest.get("experiences", [])],
                    "probes": v.manifest.get("probes"),
                    "reasons": v.manifest.get("reasons", []),
                }
                for v in registry.versions(tenant)
            ],
        }

    @app.post("/v1/adapters/{version}/promote")
    def promote(version: str, tenant: Tenant) -> dict[str, Any]:
        return {"current": registry.promote(tenant, version).version}

    @app.post("/v1/adapters/rollback")
    def rollback(tenant: Tenant, body: RollbackIn | None = None) -> dict[str, Any]:
        return {"current": registry.rollback(tenant, body.version if body else None).version}

    @app.get("/v1/reports/retention", response_model=None)
    def report(
        tenant: Tenant, format: str = "json"
    ) -> dict[str, Any] | PlainTextResponse | HTMLResponse:
        """The token's tenant's retention report: ``format`` json, md, or html (one
        self-contained page: charts, every probe answer, the buffer's contents)."""
        out = client.retention_report(tenant, format=format)
        if format == "md":
            return PlainTextResponse(out, media_type="text/markdown")
        if format == "html":
            return HTMLResponse(out)
        return dict(out)

    # -- operations ------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 once the language model is loaded (``reverie serve`` loads it at start); 503
        with status "loading" until then, so an orchestrator sends no chat to a cold server."""
        ready = client.model_loaded
        body = {"status": "ok" if ready else "loading", "stream": client.stream.name}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type="text/plain")

    return app


async def _stream(
    ident: str,
    created: int,
    model: str,
    first: tuple[str, Any],
    events: queue.Queue[tuple[str, Any]],
    gone: threading.Event,
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, one per piece of text as it is generated
    (an answer checked against recalled memories comes as one piece, once chosen); the last
    chunk carries the finish reason and Reverie's fields (adapter version, routing, whether the
    base model's answer replaced the adapter's, recalled ids), known once the answer is
    complete."""

    def chunk(delta: dict[str, Any], reason: str | None, extra: dict[str, Any] | None) -> bytes:
        body: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        if extra is not None:
            body["reverie"] = extra
        return f"data: {json.dumps(body)}\n\n".encode()

    try:
        async for piece in _pieces(chunk, first, events, ident):
            yield piece
    finally:  # the client disconnected (or the answer is complete): stop generating
        gone.set()


async def _pieces(
    chunk: Callable[[dict[str, Any], str | None, dict[str, Any] | None], bytes],
    first: tuple[str, Any],
    events: queue.Queue[tuple[str, Any]],
    ident: str,
) -> AsyncIterator[bytes]:
    yield chunk({"role": "assistant", "content": ""}, None, None)
    event = first
    while True:
        kind, payload = event
        if kind == "text":
            yield chunk({"content": payload}, None, None)
        elif kind == "done":
            extra = {
                "adapter_version": payload.adapter_version,
                "routed": payload.routed,
                "adapter_overruled": payload.overruled,
                "recalled_ids": list(payload.recalled_ids),
            }
            yield chunk({}, payload.finish_reason, extra)
            break
        else:  # failed mid-answer: say so in the stream (the status line is already sent)
            logger.error("chat stream %s failed: %s", ident, payload)
            error = {"error": {"message": str(payload), "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n".encode()
            break
        event = await asyncio.to_thread(events.get)
    yield b"data: [DONE]\n\n"
