"""Answering with memory: the base model, the tenant's current adapter, and recalled experiences.

Knowledge reaches an answer two ways. Consolidated experiences are in the tenant's adapter
weights. Experiences not yet consolidated are recalled from the buffer and put in the prompt in
the teacher's own format (``Context: ...\\nQuestion: ...``), so memory works from the moment
``log`` returns (knowledge infused at decoding time).

Adapters are hot-swapped: each request reads the tenant's current pointer; a newly promoted
version (by a daemon in another process) is verified and loaded before it is used, under the same
lock as generation, so no request ever sees a half-loaded adapter. Loaded adapters are cached per
tenant with an LRU bound.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Hit
from reverie.memory.errors import InvalidInputError
from reverie.memory.experience import Experience
from reverie.memory.router import Router, load_router
from reverie.model.metrics import added_grounding, support
from reverie.model.prompts import Message, context_prompt, encode, render
from reverie.settings import Settings

if TYPE_CHECKING:
    from reverie.model.base import BaseModel
    from reverie.model.batcher import Batcher

__all__ = [
    "RECALL_MODES",
    "RecallMode",
    "Reply",
    "Responder",
    "Sampling",
    "build_messages",
    "choose_grounded",
    "recall_mode",
    "recall_window",
    "select_recalled",
]

logger = logging.getLogger(__name__)

_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Sampling:
    """How an answer is decoded: greedy (temperature 0, the default) or sampled."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def _text(content: object, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidInputError(
                    f"{where}[{j}]", f"only text parts are supported, got {kind!r}"
                )
            if not isinstance(part.get("text"), str):
                raise InvalidInputError(f"{where}[{j}].text", "must be a string")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidInputError(where, "must be a string or a list of text parts")


RecallMode = Literal["all", "unconsolidated", "none"]
RECALL_MODES: tuple[RecallMode, ...] = ("all", "unconsolidated", "none")


def recall_mode(value: object) -> RecallMode:
    """``recall`` as a mode: True is "all", False is "none"."""
    if value is True or value is False:
        return "all" if value else "none"
    for mode in RECALL_MODES:
        if value == mode:
            return mode
    raise InvalidInputError(
        "recall", f"must be true, false, or one of {', '.join(RECALL_MODES)}; got {value!r}"
    )


CheckTies = Literal["adapter", "base"]

RECALL_MIN_SCORE = 0.25
RECALL_WINDOW = 0.1


def recall_window(value: object) -> float:
    """``window`` checked: a cosine distance from 0 to 2 (2 keeps every one of the ``k``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise InvalidInputError(
            "window", f"must be a cosine distance from 0 to 2 (2 keeps all k), got {value!r}"
        )
    return float(value)


def select_recalled(
    hits: Sequence[Hit], *, k: int, min_score: float, window: float, only_new: bool = False
) -> list[Experience]:
    """The experiences a chat puts in the prompt: of ``hits``, at most ``k`` (the best first)
    scoring ``min_score`` or more and within ``window`` (cosine, >= 0) of the best of them,
    consolidated ones left out when ``only_new``.

    The window keeps a near miss out of the prompt: on the fictional tuning split SmolLM2 with
    the three nearest experiences answered 0.55 of the held-out questions, with only those within
    0.1 of the nearest 0.68, against 0.72 with exactly the right one (the nearest was right for
    0.98 of the questions; benchmarks/results/recall.json, README "Which memories go in the
    prompt")."""
    eligible = [
        h for h in hits if h.score >= min_score and not (only_new and h.status == "consolidated")
    ]
    kept = sorted(eligible, key=lambda h: -h.score)[: max(0, k)]
    return [h.experience for h in kept if h.score >= kept[0].score - window] if kept else []


@dataclass(frozen=True)
class Reply:
    """An answer and where its knowledge came from."""

    text: str
    adapter_version: str | None
    recalled_ids: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    recalled: tuple[Experience, ...] = field(default=(), repr=False)
    routed: bool = False  # the adapter answered (False: no adapter, or its router kept it off)
    queue_seconds: float = 0.0  # waiting for the model (another chat was generating)
    generate_seconds: float = 0.0
    model: str = ""  # the base model that answered
    # the base model's answer replaced the adapter's, reading the recalled memories better
    # (see Responder.respond); adapter_text is then the adapter's (in process only)
    overruled: bool = False
    adapter_text: str | None = None


def build_messages(messages: Sequence[Message], recalled: Sequence[Experience]) -> list[Message]:
    """Put recalled experiences into the last user turn, in the teacher's context format."""
    out = [dict(m) for m in messages]
    if recalled:
        last = max(i for i, m in enumerate(out) if m["role"] == "user")
        context = "\n".join(e.text for e in recalled)
        out[last]["content"] = context_prompt(context, out[last]["content"])
    return out


MAX_MESSAGES = 200


def validate_messages(messages: object) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("messages", "give a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInputError(
            "messages",
            f"at most {MAX_MESSAGES} messages, got {len(messages)}; send the recent ones",
        )
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise InvalidInputError(
                f"messages[{i}].role", "must be system, developer, user, assistant or tool"
            )
        text = _text(m.get("content"), f"messages[{i}].content")
        role = m["role"]
        # The chat template knows system, user and assistant: a developer turn is a system
        # instruction, a tool result comes back to the model as a user turn that says so.
        if role == "developer":
            role = "system"
        elif role == "tool":
            role, text = "user", f"Tool result: {text}"
        out.append({"role": role, "content": text})
    if not any(m["role"] == "user" for m in out):
        raise InvalidInputError("messages", "needs at least one user message")
    return out


class Responder:
    """Generates answers for any tenant from one base model with per-tenant adapters.

    Concurrent chats decode together (:class:`~reverie.model.batcher.Batcher`): each row of the
    batch carries its tenant's adapter, or none where the router kept it off. A routed chat with
    memories recalled has a second row, the base model's, to check the adapter's answer
    against (:func:`choose_grounded`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: AdapterRegistry | None = None,
        base: BaseModel | None = None,
        max_adapters: int = 8,
    ) -> None:
        self.settings = settings
        self.registry = registry or AdapterRegistry(settings.data_dir / "adapters")
        self._base = base
        self._max_adapters = max_adapters
        self._lock = threading.RLock()  # model changes and decoding steps
        self._peft: Any = None  # a PeftModel once the first LoRA adapter is loaded
        self._prefixes: dict[str, Any] = {}  # adapter name -> its KVPrefix (prefix adapters)
        self._slot: Any = None  # the prefix slot once the first prefix adapter is loaded
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> version, LRU order
        self._routers: dict[str, Router | None] = {}  # adapter name -> its version's router
        self._batcher: Batcher | None = None

    @property
    def base(self) -> BaseModel:
        if self._base is not None:  # no lock once loaded: the decoding loop holds it per step
            return self._base
        with self._lock:
            if self._base is None:
                from reverie.model.base import load_base  # torch loads here, on first use

                self._base = load_base(self.settings.model, self.settings.data_dir)
            return self._base

    @property
    def batcher(self) -> Batcher:
        if self._batcher is not None:
            return self._batcher
        with self._lock:
            if self._batcher is None:
                from reverie.model.batcher import Batcher

                base = self.base
                self._batcher = Batcher(
                    self._forward,
                    eos_id=base.eos_id,
                    device=base.device,
                    max_batch=self.settings.model.serve_batch,
                    lock=self._lock,
                )
            return self._batcher

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str]) -> Any:
        """One forward pass of the batch: each row through its own adapter (or none). LoRA
        rows go to peft by name; prefix rows are the base model's there, with their prefix in
        the attention slot (reverie/model/prefix.py)."""
        from reverie.model.batcher import BASE_ADAPTER

        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        inputs["logits_to_keep"] = 1  # the LM head at the last position only (the prefill too)
        rows = [self._prefixes.get(name) for name in adapters]
        lora = [BASE_ADAPTER if name in self._prefixes else name for name in adapters]
        prefixed = self._slot.using(rows) if self._slot is not None else nullcontext()
        with prefixed:
            if self._peft is None:  # no LoRA adapter loaded yet: the base model's weights
                return self.base.model(**inputs, cache=cache, use_cache=True).logits
            return self._peft(**inputs, cache=cache, use_cache=True, adapter_names=lora).logits

    def _load(self, name: str, path: Path) -> None:
        """Load the adapter saved at ``path`` as ``name``: into peft (LoRA) or as a prefix."""
        from reverie.model.prefix import KVPrefix, adapter_kind, install

        if adapter_kind(path) == "prefix":
            self._slot = self._slot or install(self.base.model)
            self._prefixes[name] = KVPrefix.load(path, self.base.model).to(self.base.device)
            return
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base.model, str(path), adapter_name=name)
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
        self._peft.eval()  # peft takes per-row adapter names only in eval mode

    def _activate(self, tenant: str) -> tuple[str, str, Router | None] | None:
        """Load the tenant's current adapter if new; return its name, version and router
        (None: the tenant has no adapter yet)."""
        current = self.registry.current(tenant)
        if current is None:
            return None
        name = f"{tenant}@{current.version}"
        if name not in self._loaded:
            self.registry.verify(tenant, current.version)
            self._load(name, current.path)
            self._loaded[name] = current.version
            self._routers[name] = load_router(current.path)
            logger.info("loaded adapter %s", name)
            self._evict(keep=name)
        self._loaded.move_to_end(name)
        return name, current.version, self._routers[name]

    def _evict(self, keep: str) -> None:
        """Unload the least recently used adapters over the bound, never one a chat is using."""
        busy = self.batcher.adapters_in_use() | {keep}
        for name in [n for n in self._loaded if n not in busy]:
            if len(self._loaded) <= self._max_adapters:
                break
            if self._prefixes.pop(name, None) is None:
                self._peft.delete_adapter(name)
            del self._loaded[name]
            self._routers.pop(name, None)

    def respond(
        self,
        messages: Sequence[Message],
        *,
        tenant: str,
        recalled: Sequence[Experience] = (),
        max_new_tokens: int | None = None,
        query: np.ndarray | None = None,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        use_adapter: bool = True,
    ) -> Reply:
        """Answer ``messages`` for ``tenant`` with ``recalled`` experiences in the prompt.
        ``query`` is the last user turn's embedding: the tenant's router decides from it whether
        the adapter answers (without it, or without a router, the adapter answers);
        ``use_adapter=False`` answers with the base model alone."""
        from reverie.model.batcher import BASE_ADAPTER, DecodeRequest

        base = self.base
        fmt = self.settings.model
        limit = max_new_tokens or fmt.max_new_tokens
        prompt = encode(
            base.tokenizer, render(base.tokenizer, build_messages(messages, recalled), fmt)
        )
        context = int(getattr(base.model.config, "max_position_embeddings", 2048))
        if len(prompt) + limit > context:
            raise InvalidInputError(
                "messages",
                f"the prompt is {len(prompt):,} tokens (recalled memories included); with "
                f"{limit} tokens to generate at most {context - limit:,} fit the model's "
                f"{context:,}-token context: send fewer or shorter messages, or lower max_tokens",
            )
        sampling = sampling or Sampling()
        emitter = _TextEmitter(base.tokenizer, on_text) if on_text is not None else None
        batcher = self.batcher
        with batcher.exclusive():  # between two steps; the adapter stays loaded while it runs
            active = self._activate(tenant) if use_adapter else None
            name, version, router = active if active is not None else (None, None, None)
            routed = name is not None and (
                router is None or query is None or bool(router.routes(query[None])[0])
            )
            prefix = self._prefixes.get(name) if routed and name is not None else None
            if prefix is not None and prefix.tokens + len(prompt) + limit > context:
                raise InvalidInputError(
                    "messages",
                    f"the tenant's prefix adapter holds {prefix.tokens:,} tokens before the "
                    f"prompt's {len(prompt):,} and the {limit} to generate, over the model's "
                    f"{context:,}-token context: send fewer or shorter messages, or lower "
                    "max_tokens",
                )
            # With memories in the prompt, the base model answers beside the adapter (one more
            # row of the same batch) and its answer stands when it reads them better.
            check = bool(recalled) and routed and self.settings.router.check_recalled
            rows = [name if routed and name is not None else BASE_ADAPTER]
            rows += [BASE_ADAPTER] if check else []
            failed = threading.Event()  # the adapter's row failed: its check row stops too

            def stop() -> bool:
                return failed.is_set() or (should_stop is not None and should_stop())

            requests = [
                batcher.submit(
                    DecodeRequest(
                        prompt,
                        limit,
                        adapter=adapter,
                        group=tenant,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        seed=sampling.seed,
                        on_token=emitter.add if emitter is not None and not check else None,
                        should_stop=stop,
                    )
                )
                for adapter in rows
            ]
        try:
            batcher.wait(requests[0])
        except BaseException:
            failed.set()
            raise
        if check:
            try:
                batcher.wait(requests[1])
            except Exception:  # the check is lost, not the answer: the adapter's stands
                logger.warning("tenant %s: the check row failed", tenant, exc_info=True)
                requests = requests[:1]
        texts = [base.tokenizer.decode(r.ids, skip_special_tokens=True).strip() for r in requests]
        ties = self.settings.router.check_ties
        asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        chosen = int(
            len(texts) > 1 and choose_grounded(texts[0], texts[1], recalled, ties, question=asked)
        )
        if check and on_text is not None and texts[chosen]:
            on_text(texts[chosen])  # checked answers arrive whole: both had to finish first
        request, text = requests[chosen], texts[chosen]
        if chosen:
            logger.info("tenant %s: the base model's answer replaced the adapter's", tenant)
        ids = request.ids
        ended = bool(ids) and ids[-1] == base.eos_id
        started = min(r.started for r in requests)
        return Reply(
            text,
            version,
            tuple(e.id for e in recalled),
            len(prompt),
            len(ids),
            "stop" if ended else "length",
            tuple(recalled),
            routed,
            started - requests[0].submitted,
            max(r.finished for r in requests) - started,
            base.name,
            overruled=bool(chosen),
            adapter_text=texts[0] if chosen else None,
        )


def choose_grounded(
    adapter: str,
    base: str,
    recalled: Sequence[Experience],
    ties: CheckTies = "adapter",
    *,
    question: str = "",
) -> bool:
    """Whether the base model's answer replaces the adapter's, judged on what each adds to the
    ``question`` (its content words the question does not say): first by :func:`support`
    (the recalled sentence those words come from speaks more to the question), then by
    :func:`added_grounding` (a larger share of them is in the recalled memories), then by
    ``ties``. A replaced answer is the one the agent gave before consolidation (recall
    alone). Without a question this compares the shares of each answer's distinct content
    words found in the memories. The cost: an adapter answer that adds what the memories do
    not say (something it learned elsewhere) loses to a base answer that repeats them; a bare
    yes or no adds nothing: it ties with an answer that only restates the question and loses
    to one that adds recalled words."""
    if adapter == base:
        return False
    texts = [e.text for e in recalled]
    ours, theirs = support(adapter, question, texts), support(base, question, texts)
    if ours == theirs:
        ours = added_grounding(adapter, question, texts)
        theirs = added_grounding(base, question, texts)
    return theirs > ours or (theirs == ours and ties == "base")


class _TextEmitter:
    """Hands each new piece of decoded text to ``emit`` as the tokens are chosen."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if len(text) > len(self.sent):
            self.emit(text[len(self.sent) :].lstrip() if not self.sent else text[len(self.sent) :])
            self.sent = text
