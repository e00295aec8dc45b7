"""`reverie mcp` driven by the official MCP SDK's ClientSession over stdio, as agents run it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

mcp = pytest.importorskip("mcp")


def _json(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        value = result.structured_content
        return value.get("result", value) if set(value) == {"result"} else value
    return json.loads(result.content[0].text)


async def _session_run(data: Path, model: Path) -> dict[str, Any]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    env = {
        "REVERIE_DATA_DIR": str(data),
        "REVERIE_MODEL__BASE": str(model),
        "REVERIE_MODEL__MAX_NEW_TOKENS": "6",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "reverie", "mcp", "--tenant", "alice"], env=env,
        cwd=REPO,
    )  # fmt: skip
    out: dict[str, Any] = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        out["instructions"] = init.instructions
        out["tools"] = {t.name: t.description for t in (await session.list_tools()).tools}
        stored = _json(await session.call_tool("remember", {"text": "The gym locker is 4417."}))
        _json(await session.call_tool("remember", {"text": "Biscuit the cat hates salmon."}))
        out["recall"] = _json(await session.call_tool("recall", {"query": "locker code", "k": 1}))
        out["ask"] = _json(await session.call_tool("ask", {"question": "What is the locker?"}))
        out["status"] = _json(await session.call_tool("status", {}))
        out["forget"] = _json(await session.call_tool("forget", {"id": stored["id"]}))
        out["missing"] = await session.call_tool("forget", {"id": stored["id"]})
        out["list"] = _json(await session.call_tool("list_memories", {}))
        report = await session.read_resource("reverie://report/retention")
        out["report"] = report.contents[0].text
        out["stored"] = stored
    return out


def test_mcp_stdio_tools_store_recall_ask_forget(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = asyncio.run(asyncio.wait_for(_session_run(tmp_path / "data", tiny_model_dir), 300))
    assert "long-term memory" in out["instructions"]
    assert set(out["tools"]) == {"remember", "recall", "ask", "forget", "list_memories", "status"}
    assert all(len(d) > 40 for d in out["tools"].values())  # descriptions a model can choose by
    [hit] = out["recall"]
    assert hit["text"] == "The gym locker is 4417." and hit["id"] == out["stored"]["id"]
    assert isinstance(out["ask"]["answer"], str) and out["ask"]["memories_used"]
    assert out["status"]["total"] == 2
    assert out["forget"]["forgotten"] == out["stored"]["id"]
    assert out["missing"].is_error and "no experience" in out["missing"].content[0].text
    assert [m["text"] for m in out["list"]["memories"]] == ["Biscuit the cat hates salmon."]
    assert "nothing has been consolidated" in out["report"]


async def _http_calls(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    import httpx2
    from mcp import ClientSession, MCPError
    from mcp.client.streamable_http import streamable_http_client

    out = []
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for name, arguments in calls:
            if name == "read":
                try:
                    out.append(await session.read_resource(arguments["uri"]))
                except MCPError as err:  # a refused read is an error response
                    out.append(err)
            else:
                out.append(await session.call_tool(name, arguments))
    return out


def test_mcp_over_http_bearer_tokens_name_the_tenant(tmp_path: Path, tiny_model_dir: Path) -> None:
    import subprocess
    import time

    import httpx

    from reverie.agent.auth import TokenStore
    from reverie.benchmarks.broker import free_port

    data = tmp_path / "data"
    tokens = TokenStore(data)
    alice, bob = tokens.create("alice"), tokens.create("bob")
    tokens.close()
    port = free_port()
    env = {**os.environ, "REVERIE_DATA_DIR": str(data), "REVERIE_MODEL__BASE": str(tiny_model_dir)}
    log = tmp_path / "mcp.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reverie", "mcp", "--http", "--port", str(port)],
            cwd=REPO, env=env, stderr=err,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert httpx.post(url, json={}).status_code == 401  # no token: refused
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.3)
        stored, status, report = asyncio.run(_http_calls(url, alice, [
            ("remember", {"text": "The gym locker is 4417."}),
            ("status", {}),
            ("read", {"uri": "reverie://alice/report/retention"}),
        ]))  # fmt: skip
        assert _json(status)["tenant"] == "alice" and _json(status)["total"] == 1
        assert "nothing has been consolidated" in report.contents[0].text
        found, theirs = asyncio.run(_http_calls(url, bob, [
            ("recall", {"query": "locker", "k": 5}),
            ("read", {"uri": "reverie://alice/report/retention"}),
        ]))  # fmt: skip
        assert _json(found) == []  # bob never sees alice's memory
        assert "own tenant" in str(theirs)
    except BaseException:
        proc.kill()
        print(log.read_text())  # the server's side, for the failure
        raise
    finally:
        proc.terminate()
        proc.wait(30)
    assert _json(stored)["id"]
