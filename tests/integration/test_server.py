"""The HTTP API as a real server process on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reverie.agent.auth import TokenStore
from reverie.benchmarks.broker import free_port
from reverie.consolidator.cycle import Consolidator
from reverie.memory.buffer import Buffer
from reverie.memory.experience import make_experience
from reverie.settings import load_settings
from tests.conftest import REPO

TOML = """
data_dir = "{data}"
[model]
base = "{model}"
max_new_tokens = 8
[transfer]
strategies = ["verbatim"]
max_items_per_experience = 2
min_confidence = 0.0
[train]
epochs = 1
lora_r = 2
target_modules = ["q_proj"]
[consolidation]
anchor_ratio = 0.0
[gate]
min_efficacy = 0.0
min_retention = 0.0
min_locality = 0.0
"""


class Server:
    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.config = root / "reverie.toml"
        self.config.write_text(TOML.format(data=root / "data", model=model))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = {**os.environ, "REVERIE_CONFIG": str(self.config), "REVERIE_LOG_FORMAT": "json"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reverie",
                    "serve",
                    "--port",
                    str(self.port),
                    "--max-request-bytes",
                    "65536",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        tokens = TokenStore(root / "data")
        self.alice = tokens.create("alice")
        self.bob = tokens.create("bob")
        tokens.close()

    def call(self, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return httpx.request(method, self.url + path, headers=headers, timeout=120, **kw)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("server"), tiny_model_dir)
    yield s
    s.stop()


def test_log_recall_forget_over_http(server: Server) -> None:
    r = server.call(
        "POST",
        "/v1/experiences",
        server.alice,
        json={"text": "The boat is moored at pier 9.", "id": "boat"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["experience"]["id"] == "boat"
    r = server.call(
        "POST",
        "/v1/experiences",
        server.alice,
        json={"items": [{"text": "Sam's birthday is 3 May."}, {"text": "Lunch at 1."}]},
    )
    assert r.status_code == 201 and len(r.json()["experiences"]) == 2
    listed: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        after = f"&cursor={cursor}" if cursor else ""
        page = server.call("GET", f"/v1/experiences?limit=2{after}", server.alice).json()
        assert len(page["experiences"]) <= 2
        listed += [e["experience"]["text"] for e in page["experiences"]]
        cursor = page["next_cursor"]
    assert {"The boat is moored at pier 9.", "Sam's birthday is 3 May."} <= set(listed)
    assert len(listed) == len(set(listed))
    bad = server.call("GET", "/v1/experiences?status=done", server.alice)
    assert bad.status_code in (400, 422)
    hits = server.call(
        "POST", "/v1/recall", server.alice, json={"query": "where is the boat", "k": 2}
    ).json()["hits"]
    assert hits[0]["experience"]["id"] == "boat"
    gone = server.call("DELETE", "/v1/experiences/boat", server.alice)
    assert gone.status_code == 200
    assert gone.json() == {
        "forgotten": "boat",
        "erased_versions": [],
        # the model is loaded, so the proof is measured: no probes (never consolidated)
        "proof": {"questions": 0, "served_correct": 0, "base_correct": 0, "holds": None},
    }
    assert server.call("GET", "/v1/experiences/boat", server.alice).status_code == 404


def test_auth_and_tenant_isolation(server: Server) -> None:
    server.call(
        "POST", "/v1/experiences", server.alice, json={"text": "Alice's PIN is 2468.", "id": "pin"}
    )
    assert server.call("POST", "/v1/recall", None, json={"query": "pin"}).status_code == 401
    bad = server.call("POST", "/v1/recall", "rv_not-a-token", json={"query": "pin"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    assert server.call("GET", "/v1/experiences/pin", server.bob).status_code == 404
    assert server.call("DELETE", "/v1/experiences/pin", server.bob).status_code == 404
    hits = server.call("POST", "/v1/recall", server.bob, json={"query": "PIN"}).json()["hits"]
    assert all(h["experience"]["tenant"] == "bob" for h in hits)
    assert server.call("GET", "/v1/experiences/pin", server.alice).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": ""}, 400, "text"),
        ({"text": "x", "metadata": {"k": "v" * 17_000}}, 400, "metadata"),
        ({"text": "x", "colour": "red"}, 422, "colour"),
        ({"items": [{"text": "fine"}, {"text": ""}]}, 400, "items[1].text"),
        ({}, 400, "text"),
    ],
)
def test_malformed_requests_change_nothing(
    server: Server, body: dict[str, Any], status: int, field: str
) -> None:
    before = server.call("POST", "/v1/recall", server.bob, json={"query": "x", "k": 100}).json()
    r = server.call("POST", "/v1/experiences", server.bob, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    after = server.call("POST", "/v1/recall", server.bob, json={"query": "x", "k": 100}).json()
    assert before == after


def test_oversized_and_non_json_requests(server: Server) -> None:
    big = server.call(
        "POST",
        "/v1/experiences",
        server.bob,
        content=json.dumps({"text": "x" * 70_000}),
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413 and "error" in big.json()
    junk = server.call(
        "POST",
        "/v1/recall",
        server.bob,
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert junk.status_code == 422


def test_openai_client_and_hot_swap(server: Server, tiny_model_dir: Path) -> None:
    from openai import OpenAI

    oa = OpenAI(base_url=server.url + "/v1", api_key=server.alice)
    reply = oa.chat.completions.create(
        model="reverie",
        messages=[{"role": "user", "content": "Where is the boat?"}],
        max_tokens=4,
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= 4
    first = reply.model_extra["reverie"] if reply.model_extra else {}
    assert first["adapter_version"] is None

    # Another process (this test) consolidates and promotes; the server picks it up.
    settings = load_settings(server.config)
    buffer = Buffer(settings.data_dir / "buffer", dim=384, embedder_name="all-MiniLM-L6-v2")
    buffer.add(
        make_experience("The gym locker code is 4417.", tenant="alice", id="gym"),
        np.ones(384, dtype=np.float32) / np.sqrt(384),
    )
    result = Consolidator(settings, buffer=buffer).run_cycle("alice")
    buffer.close()
    assert result.outcome == "promoted"
    reply = oa.chat.completions.create(
        model="reverie", messages=[{"role": "user", "content": "locker code?"}], max_tokens=4
    )
    assert reply.model_extra and reply.model_extra["reverie"]["adapter_version"] == result.version
    assert reply.model_extra["reverie"]["adapter_overruled"] in (True, False)

    chunks = list(
        oa.chat.completions.create(
            model="reverie", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra and "adapter_overruled" in chunks[-1].model_extra["reverie"]

    listing = server.call("GET", "/v1/adapters", server.alice).json()
    assert listing["current"] == result.version
    assert server.call("GET", "/v1/adapters", server.bob).json()["current"] is None
    report = server.call("GET", "/v1/reports/retention?format=md", server.alice)
    assert report.status_code == 200 and result.version in report.text


def test_openapi_and_metrics(server: Server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"] and "/v1/experiences" in spec["paths"]
    chat = {"model": "reverie", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert server.call("POST", "/v1/chat/completions", server.alice, json=chat).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert "reverie_http_requests_total" in metrics
    assert "reverie_model_loaded 1.0" in metrics
    assert "reverie_chat_queue_seconds_count" in metrics
    generated = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("reverie_generated_tokens_total")
    )
    assert generated >= 1


def test_example_agent_loop_runs_against_the_server(server: Server) -> None:
    out = subprocess.run(
        [sys.executable, "examples/agent_loop.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "REVERIE_URL": server.url, "REVERIE_TOKEN": server.bob},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("remembered:") == 2
    assert "Q: What is Biscuit allergic to?" in out.stdout


def test_delete_tenant_over_http_erases_it_and_its_tokens(server: Server) -> None:
    store = TokenStore(load_settings(server.config).data_dir)
    carol = store.create("carol")
    store.close()
    r = server.call("POST", "/v1/experiences", carol, json={"text": "Carol's locker is 12."})
    assert r.status_code == 201
    gone = server.call("DELETE", "/v1/tenant", carol)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"tenant": "carol", "experiences": 1, "versions": 0, "tokens": 1}
    assert server.call("POST", "/v1/recall", carol, json={"query": "locker"}).status_code == 401
    assert server.call("GET", "/v1/adapters", server.alice).status_code == 200  # others stay


def test_serve_prints_its_url_and_logs_requests(server: Server) -> None:
    assert server.call("GET", "/v1/nothing-here", server.alice).status_code == 404
    log = server.log.read_text()
    assert f"serving on {server.url} (OpenAI-compatible base URL {server.url}/v1)" in log
    # JSON lines (REVERIE_LOG_FORMAT=json): the request's fields as fields
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    requests = [e["http"] for e in lines if "http" in e]
    assert {"method": "GET", "path": "/v1/nothing-here", "route": "unmatched", "status": 404} in [
        {k: r[k] for k in ("method", "path", "route", "status")} for r in requests
    ]
    assert any(r["path"] == "/healthz" and r["status"] == 200 for r in requests)
    assert all(r["ms"] >= 0 for r in requests)


def test_healthz_is_not_ready_until_the_model_loads(
    tmp_path: Path, tiny_model_dir: Path, embedder: Any
) -> None:
    from fastapi.testclient import TestClient

    from reverie.agent import MemoryClient
    from reverie.agent.server import create_app

    config = tmp_path / "reverie.toml"
    config.write_text(TOML.format(data=tmp_path / "data", model=tiny_model_dir))
    with MemoryClient(load_settings(config), embedder=embedder) as client:
        http = TestClient(create_app(client))
        cold = http.get("/healthz")
        assert cold.status_code == 503 and cold.json()["status"] == "loading"
        client.load_model()
        warm = http.get("/healthz")
        assert warm.status_code == 200 and warm.json()["status"] == "ok"


def test_openai_endpoint_is_faithful(server: Server, tiny_model_dir: Path) -> None:
    """Models list and real model name; developer/tool roles and content parts accepted;
    sampling honoured and reproducible by seed; what cannot be honoured is a clear 400."""
    import openai
    from openai import OpenAI

    oa = OpenAI(base_url=server.url + "/v1", api_key=server.alice)
    [model] = oa.models.list().data
    assert model.id == tiny_model_dir.name
    messages: Any = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
    ]
    reply = oa.chat.completions.create(model=model.id, messages=messages, max_tokens=4)
    assert reply.model == model.id and reply.choices[0].message.content is not None

    def sampled(seed: int) -> str:
        out = oa.chat.completions.create(
            model=model.id, messages=[{"role": "user", "content": "Say a word."}],
            max_tokens=8, temperature=1.5, top_p=0.95, seed=seed,
        )  # fmt: skip
        return str(out.choices[0].message.content)

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in range(6)}) > 1  # sampling, not greedy decoding

    refused = {
        "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        "n": {"n": 2},
        "response_format": {"response_format": {"type": "json_object"}},
    }
    for field, extra in refused.items():
        try:
            oa.chat.completions.create(
                model=model.id, messages=[{"role": "user", "content": "hi"}], **extra
            )
        except openai.BadRequestError as err:
            assert err.status_code == 400 and field in str(err)
        else:
            raise AssertionError(f"{field} was accepted")
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    bad = server.call(
        "POST", "/v1/chat/completions", server.alice,
        json={"messages": [{"role": "user", "content": image}]},
    )  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "messages[0].content[0]"


def test_remote_client_has_the_local_clients_methods_types_and_errors(server: Server) -> None:
    import inspect

    from reverie.agent.client import MemoryClient, Page
    from reverie.agent.remote import RemoteMemoryClient
    from reverie.memory.errors import ConflictError, InvalidInputError, NotFoundError

    public = {
        n for n, f in inspect.getmembers(MemoryClient, inspect.isfunction) if not n.startswith("_")
    }
    assert not public - set(dir(RemoteMemoryClient)) - {"sync", "load_model"}
    carol = TokenStore(server.root / "data").create("carol")
    with RemoteMemoryClient(server.url, carol) as memory:
        assert memory.tenant == "carol"
        exp = memory.log("The boat is moored at pier 7.", tenant="carol", id="boat")
        assert exp.id == "boat" and exp.tenant == "carol"
        memory.log_many(["Rent is due on the 3rd.", {"id": "gym", "text": "Locker 4417."}],
                        tenant="carol")  # fmt: skip
        hits = memory.recall("where is the boat", tenant="carol", k=1)
        assert hits[0].experience == exp and 0 < hits[0].score <= 1
        page = memory.list_experiences(tenant="carol", limit=2)
        assert isinstance(page, Page) and len(page.items) == 2 and page.next_cursor
        assert memory.get("gym", tenant="carol").experience.text == "Locker 4417."
        assert memory.update("gym", "Locker 5521.", tenant="carol").text == "Locker 5521."
        reply = memory.chat([{"role": "user", "content": "Where is the boat?"}], tenant="carol",
                            max_new_tokens=4)  # fmt: skip
        assert reply.model and "boat" in reply.recalled_ids
        only = memory.chat([{"role": "user", "content": "Where is the boat?"}], tenant="carol",
                           max_new_tokens=1, window=0.0)  # fmt: skip
        assert only.recalled_ids == ("boat",)  # nothing less close than the best hit
        assert memory.status()["tenants"]["carol"]["total"] == 3
        assert memory.forget("boat", tenant="carol") == []
        *_, erasure = memory.erasures("carol")
        ids = [e["id"] for e in memory.erasures("carol") if "id" in e]  # (carol may be reused)
        assert ids[-2:] == ["gym", "boat"]  # the update, then the forget
        assert erasure["proof"]["questions"] == 0  # measured (the model is loaded): none to ask
        assert memory.forget("gym", tenant="carol", prove=False) == []
        assert memory.erasures("carol")[-1]["proof"] is None  # asked not to measure
        assert memory.retention_report("carol") == {
            "tenant": "carol", "current": None, "versions": [], "facts": [],
        }  # fmt: skip
        assert "tenant <code>carol</code>" in memory.retention_report("carol", format="html")
        try:
            memory.get("boat", tenant="carol")
            raise AssertionError("forgotten, yet found")
        except NotFoundError:
            pass
        for call, error, field in [
            (lambda: memory.log("", tenant="carol"), InvalidInputError, "text"),
            (lambda: memory.recall("x", tenant="carol", k=500), InvalidInputError, "k"),
            (lambda: memory.log("other", tenant="carol", id="gym"), ConflictError, None),
            (lambda: memory.log("mine", tenant="alice"), InvalidInputError, "tenant"),
            (
                lambda: memory.chat([{"role": "user", "content": "x"}], tenant="carol", window=3),
                InvalidInputError,
                "window",
            ),
        ]:
            try:
                call()
            except error as err:
                assert field is None or getattr(err, "field", None) == field, (err, field)
            else:
                raise AssertionError(f"no {error.__name__}")


def test_chat_streams_each_piece_as_it_is_generated(server: Server) -> None:
    from openai import OpenAI

    oa = OpenAI(base_url=server.url + "/v1", api_key=server.alice)
    # no recall: an answer checked against recalled memories would come whole
    ask = {"model": "reverie", "messages": [{"role": "user", "content": "Count to ten."}],
           "max_tokens": 24, "extra_body": {"recall": False}}  # fmt: skip
    whole = oa.chat.completions.create(**ask)
    chunks = list(oa.chat.completions.create(**ask, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 3  # token by token, not one block
    assert "".join(pieces).strip() == (whole.choices[0].message.content or "").strip()
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].model_extra and "adapter_version" in chunks[-1].model_extra["reverie"]
    too_long = {"model": "reverie", "messages": [{"role": "user", "content": "word " * 9000}],
                "stream": True}  # fmt: skip
    refused = server.call("POST", "/v1/chat/completions", server.alice, json=too_long)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "messages"


def test_a_client_that_disconnects_stops_its_generation(server: Server) -> None:
    body = {"model": "reverie", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 440, "stream": True, "recall": False}  # fmt: skip
    headers = {"Authorization": f"Bearer {server.alice}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers,
                      timeout=60) as response:  # fmt: skip
        lines = response.iter_lines()
        got = [next(lines) for _ in range(3)]  # the role chunk and the first pieces
    assert all(line.startswith("data: ") or not line for line in got)
    deadline = time.monotonic() + 60
    while "client gone, stopped after" not in server.log.read_text():
        assert time.monotonic() < deadline, "generation did not stop"
        time.sleep(0.2)
    line = next(x for x in server.log.read_text().splitlines() if "client gone" in x)
    assert int(line.split("stopped after ")[1].split()[0]) < 440
