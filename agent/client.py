"""``MemoryClient``: what an agent calls to log, recall and forget experiences.

``log`` returns only after the stream has durably acknowledged the experience *and* the buffer
can recall it. The buffer is a view of the stream: :meth:`MemoryClient.sync` (run on open) applies
any stream record the buffer lacks, e.g. one acknowledged just before a crash, so no acknowledged
experience is ever missing from recall, and dedupe by (tenant, id) means none is there twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from reverie.agent.auth import TokenStore
from reverie.agent.chat import (
    RECALL_MIN_SCORE,
    RECALL_WINDOW,
    RecallMode,
    Reply,
    Responder,
    Sampling,
    recall_mode,
    recall_window,
    select_recalled,
    validate_messages,
)
from reverie.agent.proof import ErasureLog, probe_questions, prove
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer, Hit, Status, StoredExperience
from reverie.memory.embedder import Embedder, SentenceTransformerEmbedder
from reverie.memory.erasure import erase_forgotten, erase_holding
from reverie.memory.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from reverie.memory.experience import Experience, make_experience, validate_tenant
from reverie.memory.files import require_writable
from reverie.memory.ingest import Ingest, classify, refusal
from reverie.memory.stream import ExperienceStream, StreamRecord, open_stream
from reverie.memory.sync import sync_buffer
from reverie.settings import Settings, load_settings

__all__ = ["LogItem", "MemoryClient"]

logger = logging.getLogger(__name__)

LogItem = str | Mapping[str, Any]
"""An item of :meth:`MemoryClient.log_many`: the text, or a mapping with ``text`` and optionally
``id``, ``source``, ``metadata`` and ``created_at``."""

_ITEM_KEYS = {"text", "id", "source", "metadata", "created_at"}
MAX_QUERY_CHARS = 4_000
MAX_K = 100


STATUSES = ("buffered", "consolidated", "unconsolidated")
MAX_PAGE = 1000


@dataclass(frozen=True)
class Page:
    """A page of experiences and the cursor of the next page (None: this was the last)."""

    items: list[StoredExperience]
    next_cursor: str | None


def _utc_iso(value: datetime | str | None, field: str) -> str | None:
    """``value`` as the buffer stores times (ISO-8601, UTC), or None."""
    if value is None:
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            field, "give an ISO-8601 time such as 2026-11-29T12:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


def writable(client: MemoryClient) -> None:
    """Raise :class:`StorageError` if ``client``'s data dir cannot be written."""
    if client.read_only:
        require_writable(client.settings.data_dir)


def _private(directory: Path) -> None:
    """Only the user who runs Reverie may read the data dir (experience text, token hashes)."""
    try:
        directory.chmod(0o700)
    except PermissionError:  # not ours (a shared, read-only or mounted dir): leave it as it is
        logger.warning("could not make %s private to its owner", directory)


class MemoryClient:
    """Log, recall and forget experiences of any number of tenants.

    Thread-safe. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        stream: ExperienceStream | None = None,
        sync: bool = True,
    ) -> None:
        self.settings = settings or load_settings()
        data = self.settings.data_dir
        # A data dir that cannot be written (a read-only mount, a snapshot): reads work, every
        # write is refused up front with one clear error, and nothing is repaired or cached.
        self.read_only = data.is_dir() and not os.access(data, os.W_OK)
        if not self.read_only:
            data.mkdir(parents=True, exist_ok=True)
            _private(data)
        self._stream = stream or open_stream(self.settings.stream, data, self.read_only)
        self._embedder = embedder or SentenceTransformerEmbedder(self.settings.embedder)
        self.buffer = Buffer(
            data / "buffer",
            dim=self._embedder.dim,
            embedder_name=self._embedder.name,
            settings=self.settings.buffer,
            read_only=self.read_only,
        )
        self.registry = AdapterRegistry(self.settings.data_dir / "adapters")
        self._responder: Responder | None = None  # the language model loads on the first chat
        self._responder_lock = threading.Lock()
        if sync and not self.read_only:
            self.sync()

    @property
    def stream(self) -> ExperienceStream:
        return self._stream

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    # -- writes ----------------------------------------------------------------------------
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
        """Log one experience; returns once it is durable and recallable. Idempotent per id.
        ``created_at`` (default now) is when it happened, for agents that log after the fact."""
        item: dict[str, Any] = {
            "text": text,
            "id": id,
            "source": source,
            "metadata": metadata,
            "created_at": created_at,
        }
        return self._log([make_experience(tenant=tenant, **item)])[0]

    def log_many(self, items: Sequence[LogItem], *, tenant: str) -> list[Experience]:
        """Log a batch (embedded and appended together). All items are validated first: if any
        is invalid, nothing is written and the error names it (``items[3].text: ...``)."""
        validate_tenant(tenant)
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise InvalidInputError("items", "must be a list of texts or of objects with 'text'")
        experiences = []
        for i, item in enumerate(items):
            where = f"items[{i}]."
            if isinstance(item, str):
                fields: dict[str, Any] = {"text": item}
            elif isinstance(item, Mapping):
                unknown = set(item) - _ITEM_KEYS
                if unknown:
                    raise InvalidInputError(
                        f"{where}{sorted(unknown)[0]}",
                        f"unknown key; items take {', '.join(sorted(_ITEM_KEYS))}",
                    )
                fields = dict(item)
            else:
                raise InvalidInputError(
                    f"items[{i}]", f"must be a text or an object, got {type(item).__name__}"
                )
            experiences.append(make_experience(tenant=tenant, where=where, **fields))
        return self._log(experiences)

    def _log(self, experiences: list[Experience]) -> list[Experience]:
        writable(self)
        if not experiences:
            return []
        tenant = experiences[0].tenant
        # Same id twice in one batch: identical content collapses, different content is an error.
        unique: dict[str, Experience] = {}
        for exp in experiences:
            seen = unique.setdefault(exp.id, exp)
            if seen.content_key() != exp.content_key():
                raise ConflictError(
                    f"id {exp.id!r} appears twice in the batch with different "
                    "content; give each experience its own id"
                )
        # Check, embed the new ones (slow: outside the lock), then check again and write under
        # the tenant's ingest lock, so a refused write leaves no trace in the stream.
        verdicts = self._verdicts(tenant, unique)
        candidates = [unique[i] for i, v in verdicts.items() if v is Ingest.NEW]
        vectors = self._embedder.embed([e.text for e in candidates]) if candidates else None
        with self.buffer.ingest_lock(tenant):
            verdicts.update(self._verdicts(tenant, {e.id: e for e in candidates}))
            keep = [i for i, e in enumerate(candidates) if verdicts[e.id] is Ingest.NEW]
            new = [candidates[i] for i in keep]
            if new and vectors is not None:
                positions = self._stream.append([StreamRecord.logged(exp) for exp in new])
                try:
                    self.buffer.add_many(new, vectors[keep], positions)
                except (sqlite3.Error, OSError) as err:
                    raise StorageError(
                        f"tenant {tenant!r}: {len(new)} experience(s) reached the stream but not "
                        f"the buffer ({err}); they may be written: retry with the same ids "
                        "(a retry is idempotent)"
                    ) from err
                logger.debug("logged %d experiences for tenant %s", len(new), tenant)
        stored = self.buffer.get_many(tenant, [i for i, v in verdicts.items() if v is Ingest.SAME])
        result = {**{k: v.experience for k, v in stored.items()}, **{e.id: e for e in new}}
        return [result[exp.id] for exp in experiences]

    def _verdicts(self, tenant: str, experiences: Mapping[str, Experience]) -> dict[str, Ingest]:
        """The ingest rule for each experience (by id); raises the refusal of the first that
        may not be written."""
        stored = self.buffer.get_many(tenant, list(experiences))
        verdicts = {
            id_: classify(
                exp,
                stored.get(id_),
                forgotten=id_ not in stored and self.buffer.is_forgotten(tenant, id_),
            )
            for id_, exp in experiences.items()
        }
        for id_, verdict in verdicts.items():
            if (error := refusal(verdict, experiences[id_])) is not None:
                raise error
        return verdicts

    def forget(self, id: str, *, tenant: str, prove: bool | None = None) -> list[str]:
        """Erase an experience: a forget record goes to the stream, the buffer drops it (no
        replay brings it back), and every adapter version whose weights hold it is erased, the
        tenant's pointer moving first to the newest version that does not (or to none): from
        the moment this returns, no served answer comes from weights that learned it. The
        tenant's other experiences in those versions are consolidated again by the next cycle.

        The erasure is recorded (:meth:`erasures`) with its proof: the experience's probe
        questions asked of the model as now served and of the base model (``prove``: None
        measures it when the language model is already loaded here, True loads it, False
        skips it). Returns the erased versions. Raises :class:`NotFoundError` if the tenant has
        no such id."""
        validate_tenant(tenant)
        writable(self)
        stored = self.buffer.get(tenant, id)
        if stored is None:
            raise NotFoundError(f"tenant {tenant!r} has no experience {id!r}")
        proving = self.model_loaded if prove is None else prove
        questions = self._questions(stored.experience) if proving else []
        self._stream.append([StreamRecord.forgotten(tenant, id)])
        self.buffer.delete(tenant, id)
        # The logged record: overwritten in place (embedded), its keys destroyed (Kafka).
        self._stream.redact(stored.position, stored.experience, every_revision=True)
        erased = erase_forgotten(self.registry, self.buffer, tenant)
        self._record_erasure(tenant, id, erased, questions if proving else None)
        return erased

    def erasures(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's erasure records, oldest first: id, time, versions erased, the version
        live afterwards, and the proof (right answers of the served and of the base model to
        the forgotten experience's probe questions; None where it was not measured)."""
        return ErasureLog(self.settings.data_dir).entries(tenant)

    def _questions(self, experience: Experience) -> list[tuple[str, list[str]]]:
        holding = [
            v.version
            for v in self.registry.versions(experience.tenant)
            if "erased" not in v.manifest
            and any(e["id"] == experience.id for e in v.manifest.get("experiences", []))
        ]
        return probe_questions(experience, self.registry, holding)

    def _record_erasure(
        self, tenant: str, id: str, erased: list[str], questions: list[tuple[str, list[str]]] | None
    ) -> None:
        proof = None
        if questions is not None:
            responder = self.load_model()

            def served(q: str) -> str:
                query = self._embedder.embed([q])[0]  # routed as a served question is
                return responder.respond([{"role": "user", "content": q}], tenant=tenant,
                                         query=query).text  # fmt: skip

            def base(q: str) -> str:
                return responder.respond([{"role": "user", "content": q}], tenant=tenant,
                                         use_adapter=False).text  # fmt: skip

            try:
                proof = prove(questions, served, base)
            except Exception as err:  # the erasure is done: record it, and why it is unproven
                logger.exception("erasure of %s/%s: the proof failed", tenant, id)
                proof = {"questions": len(questions), "holds": None, "error": str(err)}
            if proof["holds"] is False:
                logger.warning("erasure of %s/%s: served model still answers %d of %d probes "
                               "(base %d)", tenant, id, proof["served_correct"],
                               proof["questions"], proof["base_correct"])  # fmt: skip
        current = self.registry.current(tenant)
        ErasureLog(self.settings.data_dir).record(
            tenant,
            {
                "id": id,
                "erased_versions": erased,
                "live_version": current.version if current else None,
                "proof": proof,
            },
        )

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
        """Replace experience ``id`` by a new revision. The old one is forgotten as by
        :meth:`forget` (adapter versions holding it erased at once, its stream record
        overwritten where the stream allows it); the new one is buffered, recallable at once
        and consolidated by the next cycle. The same content again changes nothing."""
        writable(self)
        new = make_experience(
            text, tenant=tenant, id=id, source=source, metadata=metadata, created_at=created_at
        )
        vector = self._embedder.embed([new.text])[0]
        with self.buffer.ingest_lock(tenant):
            stored = self.buffer.get(tenant, id)
            if stored is None:
                raise NotFoundError(f"tenant {tenant!r} has no experience {id!r} to update")
            if stored.experience.content_key() == new.content_key():
                return stored.experience
            [position] = self._stream.append([StreamRecord.updated(new)])
            self.buffer.replace(new, vector, position)
            self._stream.redact(stored.position, stored.experience)  # the old revision only
            proving = self.model_loaded
            questions = self._questions(stored.experience) if proving else None
            erased = erase_holding(
                self.registry, self.buffer, tenant, {id}, reason=f"updated: {id}"
            )
        self._record_erasure(tenant, id, erased, questions)
        return new

    def delete_tenant(self, tenant: str) -> dict[str, int]:
        """Erase a whole tenant the way :meth:`forget` erases one experience: every experience
        (a forget record each on the stream, the logged records overwritten where the stream
        allows it), every adapter version, the index, the training checkpoints and every token
        of the tenant. Returns what was deleted."""
        validate_tenant(tenant)
        writable(self)
        rows = self.buffer.experiences(tenant)
        ids = [r.experience.id for r in rows]
        if ids:
            self._stream.append([StreamRecord.forgotten(tenant, i) for i in ids])
        self.buffer.delete_many(tenant, ids)
        for r in rows:
            self._stream.redact(r.position, r.experience, every_revision=True)
        self.buffer.drop_index(tenant)
        versions = self.registry.delete_tenant(tenant)
        shutil.rmtree(self.settings.data_dir / "work" / tenant, ignore_errors=True)
        erasures = ErasureLog(self.settings.data_dir)
        erasures.drop(tenant)  # its earlier records name its experiences: they go too
        erasures.record(
            tenant, {"deleted_tenant": True, "experiences": len(ids), "erased_versions": versions}
        )
        tokens = TokenStore(self.settings.data_dir)
        try:
            revoked = tokens.revoke_tenant(tenant)
        finally:
            tokens.close()
        logger.warning("deleted tenant %s: %d experiences, %d versions", tenant, len(ids), versions)
        return {"experiences": len(ids), "versions": versions, "tokens": revoked}

    # -- reads -----------------------------------------------------------------------------
    def recall(self, query: str, *, tenant: str, k: int = 5) -> list[Hit]:
        """The ``k`` experiences of ``tenant`` closest in meaning to ``query``, best first."""
        validate_tenant(tenant)
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query", "give a non-blank text to search for")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInputError("query", f"at most {MAX_QUERY_CHARS:,} characters")
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError("k", f"must be an integer from 1 to {MAX_K}, got {k!r}")
        vector = self._embedder.embed([query])[0]
        return self.buffer.search(tenant, vector, k)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tenant: str,
        recall: bool | RecallMode = "all",
        k: int = 3,
        max_new_tokens: int | None = None,
        min_score: float = RECALL_MIN_SCORE,
        window: float = RECALL_WINDOW,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Reply:
        """Answer with the base model + the tenant's current adapter and, by ``recall``, the
        ``k`` experiences closest to the last user turn (cosine >= ``min_score``, and within
        ``window`` of the closest: a small model answers worse beside a near miss) in the prompt:

        * ``"all"`` (or True, the default): consolidated or not, so consolidating a fact never
          makes the agent answer worse than it did from the buffer;
        * ``"unconsolidated"``: only experiences not yet in the adapter's weights;
        * ``"none"`` (or False): nothing recalled; the answer comes from the weights alone.

        Decoding is greedy unless ``temperature`` > 0 (then sampled, nucleus ``top_p``,
        reproducible with ``seed``). ``on_text`` hears each new piece of the answer as it is
        generated (streaming; an answer checked against the recalled memories, see
        ``router.check_recalled``, comes as one piece once chosen); generation ends early once
        ``should_stop()`` is true. The reply names the adapter version, the recalled experience
        ids, and whether the base model's answer replaced the adapter's (``overruled``)."""
        validate_tenant(tenant)
        turns = validate_messages(list(messages))
        sampling = _sampling(temperature, top_p, seed)
        mode = recall_mode(recall)
        if not isinstance(k, int) or not 0 <= k <= MAX_K:
            raise InvalidInputError("k", f"must be an integer from 0 to {MAX_K}, got {k!r}")
        window = recall_window(window)
        recalled: list[Experience] = []
        question = next(m["content"] for m in reversed(turns) if m["role"] == "user")
        vector = self._embedder.embed([question])[0]  # recalls, and routes the adapter
        if mode != "none" and k:
            hits = self.buffer.search(tenant, vector, k * 4)
            recalled = select_recalled(
                hits, k=k, min_score=min_score, window=window, only_new=mode == "unconsolidated"
            )
        return self.load_model().respond(
            turns,
            tenant=tenant,
            recalled=recalled,
            max_new_tokens=max_new_tokens,
            query=vector,
            sampling=sampling,
            on_text=on_text,
            should_stop=should_stop,
        )

    def load_model(self) -> Responder:
        """Load the language model now (it otherwise loads on the first chat); idempotent and
        safe to call from a background thread while other requests are served."""
        with self._responder_lock:
            if self._responder is None:
                self._responder = Responder(self.settings)
            return self._responder

    @property
    def model_loaded(self) -> bool:
        return self._responder is not None

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
        """A page of ``tenant``'s experiences in logging order, optionally only those with a
        ``status`` (buffered, consolidated, unconsolidated) or created in ``[since, until)``.
        Pass the page's ``next_cursor`` back for the next page (None: no more)."""
        validate_tenant(tenant)
        if status is not None and status not in STATUSES:
            raise InvalidInputError("status", f"must be one of {', '.join(STATUSES)}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError("limit", f"must be an integer from 1 to {MAX_PAGE}")
        try:
            after = int(cursor) if cursor is not None else 0
        except ValueError:
            raise InvalidInputError("cursor", "pass back a page's next_cursor as it was") from None
        rows = self.buffer.page(
            tenant,
            after_seq=after,
            limit=limit + 1,
            status=status,
            since=_utc_iso(since, "since"),
            until=_utc_iso(until, "until"),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].seq) if more and rows else None)

    def retention_report(self, tenant: str, *, format: str = "json") -> Any:
        """``tenant``'s retention report: the document (``"json"``), Markdown (``"md"``), or a
        self-contained HTML page (``"html"``: charts, answers, and the buffer's contents). No
        model is loaded."""
        from reverie.consolidator.report import load_report, to_markdown

        validate_tenant(tenant)
        report = load_report(self.registry, tenant)
        if format == "json":
            return report
        if format == "md":
            return to_markdown(report)
        if format != "html":
            raise InvalidInputError("format", f"must be json, md or html, got {format!r}")
        from reverie.consolidator.report_html import to_html

        rows, cursor = [], None
        while True:
            page = self.list_experiences(tenant=tenant, limit=MAX_PAGE, cursor=cursor)
            rows += page.items
            if (cursor := page.next_cursor) is None:
                break
        experiences = [
            {
                "id": r.experience.id,
                "text": r.experience.text,
                "status": r.status,
                "version": r.version,
                "created_at": r.experience.created_at.isoformat(timespec="seconds"),
            }
            for r in rows
        ]
        gate = self.settings.gate.model_dump(exclude={"max_attempts"})
        counts = self.buffer.stats().get(tenant)
        return to_html(report, thresholds=gate, experiences=experiences, counts=counts)

    def get(self, id: str, *, tenant: str) -> StoredExperience:
        validate_tenant(tenant)
        stored = self.buffer.get(tenant, id)
        if stored is None:
            raise NotFoundError(f"tenant {tenant!r} has no experience {id!r}")
        return stored

    def status(self) -> dict[str, Any]:
        """Counts per tenant (with each tenant's live adapter version), the stream's end offsets
        and how many messages sit in its dead-letter queue."""
        tenants: dict[str, dict[str, Any]] = {}
        for tenant, counts in self.buffer.stats().items():
            try:
                current = self.registry.current(tenant)
            except IntegrityError as err:  # one tenant's damage stays that tenant's
                tenants[tenant] = {**counts, "adapter": None, "error": str(err)}
                continue
            tenants[tenant] = {**counts, "adapter": current.version if current else None}
        return {
            "data_dir": str(self.settings.data_dir),
            "stream": {
                "name": self._stream.name,
                "partitions": self._stream.partitions,
                "end_offsets": self._stream.end_offsets(),
                "dead_letters": len(self._stream.dead_letters()),
            },
            "embedder": self._embedder.name,
            "tenants": tenants,
        }

    # -- recovery --------------------------------------------------------------------------
    def sync(self, batch: int = 500) -> int:
        """Apply stream records the buffer has not seen; returns how many experiences it added."""
        return sync_buffer(self.buffer, self._stream, self._embedder, batch)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.buffer.close()
        self._stream.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _sampling(temperature: object, top_p: object, seed: object) -> Sampling:
    """Validated decoding settings (errors name the field and the range)."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise InvalidInputError("temperature", "must be a number from 0 to 2")
    if not 0 <= temperature <= 2:
        raise InvalidInputError("temperature", f"must be from 0 to 2, got {temperature}")
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InvalidInputError("top_p", f"must be a number in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInputError("seed", f"must be an integer, got {seed!r}")
    return Sampling(float(temperature), float(top_p), seed)
