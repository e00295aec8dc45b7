"""``RemoteMemoryClient``: the client's methods over the HTTP API of a ``reverie serve``.

An agent in another process or on another host uses it instead of :class:`MemoryClient`: it never
opens the data dir, it returns the same types (:class:`Experience`, :class:`Hit`, :class:`Page`,
:class:`Reply`) and raises the same errors (a 400 is an :class:`InvalidInputError` naming the
field, a 404 a :class:`NotFoundError`, a 409 a :class:`ConflictError`). The bearer token names
the tenant; the ``tenant`` argument every method takes must be that tenant (checked, so code
written for the local client cannot write to another tenant by mistake).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from reverie.agent.chat import RECALL_WINDOW, RecallMode, Reply
from reverie.agent.client import LogItem, Page
from reverie.memory.buffer import Hit, Status, StoredExperience
from reverie.memory.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    ReverieError,
    StorageError,
)
from reverie.memory.experience import Experience

__all__ = ["RemoteMemoryClient"]


class RemoteMemoryClient:
    """``RemoteMemoryClient("http://127.0.0.1:8080", token)``: same methods as MemoryClient."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self.tenant: str = self._call("GET", "/v1/status")["tenant"]

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, text: bool = False, **kw: Any) -> Any:
        """The response's JSON (``text``: its body as text); errors raised as the local
        client raises them."""
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise StorageError(f"the Reverie server did not answer: {err}") from None
        if response.status_code < 400:
            if text:
                return response.text
            return response.json() if response.content else None
        try:
            error = response.json()["error"]
            message, field = str(error.get("message")), error.get("field")
        except (ValueError, KeyError, TypeError):
            message, field = response.text or response.reason_phrase, None
        code = response.status_code
        if code in (400, 422) and field:
            prefix = f"{field}: "
            raise InvalidInputError(field, message.removeprefix(prefix))
        if code == 404:
            raise NotFoundError(message)
        if code == 409:
            raise ConflictError(message)
        if code == 401:
            raise ReverieError(f"the server refused the token: {message}")
        raise ReverieError(f"HTTP {code}: {message}")

    def _check(self, tenant: str) -> None:
        if tenant != self.tenant:
            raise InvalidInputError(
                "tenant", f"this client's token acts for {self.tenant!r}, not {tenant!r}"
            )

    @staticmethod
    def _stored(row: dict[str, Any]) -> StoredExperience:
        return StoredExperience(
            Experience.model_validate(row["experience"]), row["status"], None, row.get("version")
        )

    # -- the client's methods --------------------------------------------------------------
    def log(
        self,
        text: str,
        *,
        tenant: str,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
        source: str | None = None,
        created_at: datetime | str | None = None,
    ) -> Experience:
        self._check(tenant)
        when = created_at.isoformat() if isinstance(created_at, datetime) else created_at
        body = {"text": text, "metadata": metadata, "id": id, "source": source, "created_at": when}
        out = self._call("POST", "/v1/experiences", json={k: v for k, v in body.items() if v})
        return Experience.model_validate(out["experience"])

    def log_many(self, items: Sequence[LogItem], *, tenant: str) -> list[Experience]:
        self._check(tenant)
        rows: list[dict[str, Any]] = [{"text": i} if isinstance(i, str) else dict(i) for i in items]
        for row in rows:
            when = row.get("created_at")
            if isinstance(when, datetime):
                row["created_at"] = when.isoformat()
        out = self._call("POST", "/v1/experiences", json={"items": rows})
        return [Experience.model_validate(e) for e in out["experiences"]]

    def update(
        self,
        id: str,
        text: str,
        *,
        tenant: str,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        created_at: datetime | str | None = None,
    ) -> Experience:
        self._check(tenant)
        when = created_at.isoformat() if isinstance(created_at, datetime) else created_at
        body = {"text": text, "metadata": metadata, "source": source, "created_at": when}
        out = self._call("PUT", f"/v1/experiences/{id}", json={k: v for k, v in body.items() if v})
        return Experience.model_validate(out["experience"])

    def forget(self, id: str, *, tenant: str, prove: bool | None = None) -> list[str]:
        self._check(tenant)
        params = {} if prove is None else {"prove": str(prove).lower()}
        out = self._call("DELETE", f"/v1/experiences/{id}", params=params)
        return list((out or {}).get("erased_versions", []))

    def erasures(self, tenant: str) -> list[dict[str, Any]]:
        self._check(tenant)
        return list(self._call("GET", "/v1/erasures")["erasures"])

    def retention_report(self, tenant: str, *, format: str = "json") -> Any:
        self._check(tenant)
        params = {"format": format}
        return self._call("GET", "/v1/reports/retention", text=format != "json", params=params)

    def delete_tenant(self, tenant: str) -> dict[str, int]:
        self._check(tenant)
        out = self._call("DELETE", "/v1/tenant")
        return {k: v for k, v in out.items() if k != "tenant"}

    def recall(self, query: str, *, tenant: str, k: int = 5) -> list[Hit]:
        self._check(tenant)
        out = self._call("POST", "/v1/recall", json={"query": query, "k": k})
        return [
            Hit(Experience.model_validate(h["experience"]), h["score"], h["status"])
            for h in out["hits"]
        ]

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tenant: str,
        recall: bool | RecallMode = "all",
        k: int = 3,
        max_new_tokens: int | None = None,
        window: float = RECALL_WINDOW,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Reply:
        self._check(tenant)
        body: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "recall": recall,
            "k": k,
            "window": window,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        }
        if max_new_tokens is not None:
            body["max_tokens"] = max_new_tokens
        out = self._call("POST", "/v1/chat/completions", json=body)
        choice, extra, usage = out["choices"][0], out.get("reverie") or {}, out.get("usage") or {}
        return Reply(
            choice["message"]["content"],
            extra.get("adapter_version"),
            tuple(extra.get("recalled_ids") or ()),
            usage.get("prompt_tokens", 0),
            usage.get("completion_tokens", 0),
            choice.get("finish_reason", "stop"),
            routed=bool(extra.get("routed")),
            overruled=bool(extra.get("adapter_overruled")),
            model=out.get("model", ""),
        )

    def list_experiences(
        self,
        *,
        tenant: str,
        status: Status | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        self._check(tenant)
        params = {"status": status, "limit": limit, "cursor": cursor}
        params |= {
            "since": since.isoformat() if isinstance(since, datetime) else since,
            "until": until.isoformat() if isinstance(until, datetime) else until,
        }
        out = self._call(
            "GET", "/v1/experiences", params={k: v for k, v in params.items() if v is not None}
        )
        return Page([self._stored(r) for r in out["experiences"]], out["next_cursor"])

    def get(self, id: str, *, tenant: str) -> StoredExperience:
        self._check(tenant)
        return self._stored(self._call("GET", f"/v1/experiences/{id}"))

    def status(self) -> dict[str, Any]:
        """The token's tenant's counts, in the shape of ``MemoryClient.status()``."""
        out = self._call("GET", "/v1/status")
        return {"tenants": {out["tenant"]: {k: v for k, v in out.items() if k != "tenant"}}}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteMemoryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
