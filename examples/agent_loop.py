"""A minimal agent that uses Reverie as its memory, through the official ``openai`` client.

Start a server and make a token first:

    reverie tokens create --tenant alice        # prints rv_... once
    reverie serve                               # http://127.0.0.1:8080

then run:

    REVERIE_TOKEN=rv_... python examples/agent_loop.py

The agent logs what the user tells it (POST /v1/experiences) and later asks about it through the
OpenAI-compatible chat endpoint: memories not yet consolidated are recalled into the prompt; once
the daemon (``reverie daemon``) has consolidated them, they are answered from the adapter weights.
"""

from __future__ import annotations

import os

import httpx
from openai import OpenAI

BASE_URL = os.environ.get("REVERIE_URL", "http://127.0.0.1:8080")
TOKEN = os.environ["REVERIE_TOKEN"]

LEARNED = [
    "The user's cat Biscuit is allergic to salmon.",
    "The user's landlord is Teodor Vasquez; rent is due on the 3rd.",
]
QUESTIONS = ["What is Biscuit allergic to?", "Who is my landlord?"]


def remember(text: str) -> None:
    response = httpx.post(
        f"{BASE_URL}/v1/experiences",
        json={"text": text, "source": "chat"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    response.raise_for_status()
    print("remembered:", response.json()["experience"]["id"])


def main() -> None:
    llm = OpenAI(base_url=f"{BASE_URL}/v1", api_key=TOKEN)
    for text in LEARNED:
        remember(text)
    for question in QUESTIONS:
        reply = llm.chat.completions.create(
            model="reverie",
            messages=[{"role": "user", "content": question}],
            max_tokens=48,
        )
        provenance = (reply.model_extra or {}).get("reverie", {})
        print(f"Q: {question}\nA: {reply.choices[0].message.content}")
        print(
            f"   adapter {provenance.get('adapter_version')}, "
            f"recalled {provenance.get('recalled_ids')}"
        )


if __name__ == "__main__":
    main()
