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
