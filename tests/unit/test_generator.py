"""Generator-written QA pairs: parsing, template validation, and the OpenAI-compatible path
against a real local HTTP endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reverie.consolidator.config import GeneratorSettings
from reverie.consolidator.generator import generate_pairs, parse_pairs
from reverie.memory.experience import make_experience
from reverie.model.config import ModelSettings

REPLY = "Q1: What is Biscuit allergic to?\nA1: salmon\n\nQ2: Who is Biscuit?\nA2: the user's cat\n"


def test_parse_pairs() -> None:
    assert parse_pairs(REPLY) == [
        ("What is Biscuit allergic to?", "salmon"),
        ("Who is Biscuit?", "the user's cat"),
    ]
    assert parse_pairs("Q: not a question\nA: x") == []
    assert parse_pairs("nothing useful") == []


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Write questions about {experience}", "{n}"),
        ("Write {n} questions", "{experience}"),
        ("Write {n} questions about {experience} in {language}", "unknown placeholder"),
    ],
)
def test_templates_are_validated(prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorSettings(prompt=prompt)


def test_endpoint_settings_are_required() -> None:
    with pytest.raises(ValueError, match="url"):
        GeneratorSettings(kind="openai")
    with pytest.raises(ValueError, match="path"):
        GeneratorSettings(kind="local")


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            data = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": REPLY}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_openai_compatible_generator(
    endpoint: tuple[str, list[dict[str, Any]]], tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = endpoint
    monkeypatch.setenv("GEN_KEY", "sk-test")
    settings = GeneratorSettings(
        kind="openai", url=url, model="big", pairs=2, api_key_env="GEN_KEY"
    )
    exp = make_experience("The user's cat Biscuit is allergic to salmon.", tenant="t", id="cat")
    pairs = generate_pairs([exp], settings, base=tiny_base, fmt=ModelSettings())
    assert pairs == {
        "cat": [("What is Biscuit allergic to?", "salmon"), ("Who is Biscuit?", "the user's cat")]
    }
    [request] = seen
    assert request["path"] == "/v1/chat/completions" and request["model"] == "big"
    assert request["auth"] == "Bearer sk-test"
    assert (
        exp.text in request["messages"][0]["content"] and "2" in request["messages"][0]["content"]
    )


def test_base_model_generator_runs(tiny_base: Any) -> None:
    exp = make_experience("The gym locker code is 4417.", tenant="t", id="gym")
    pairs = generate_pairs(
        [exp], GeneratorSettings(max_new_tokens=16), base=tiny_base, fmt=ModelSettings()
    )
    assert set(pairs) == {"gym"}  # a random model writes no parsable pairs, but nothing breaks
