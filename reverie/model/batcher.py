"""Continuous batching: concurrent chats decode together, one token per step each.

Decoding a small model is bound by reading its weights once per step, so eight answers per step
cost little more than one. A request joins the running batch at the next step (its prompt is
prefilled alone, its key/value cache left-padded into the batch's) and leaves it when it ends, so a
short answer never waits behind a long one. Each row names its adapter (peft's mixed-adapter
batches: ``adapter_names``, ``"__base__"`` for none), so tenants share a batch. When more requests
wait than the batch holds, the next one admitted is from the group (tenant) with the fewest rows
running, then the one served least recently: one tenant's burst cannot starve another.

Greedy rows give the same tokens as ``generate``; sampled rows draw from their own seeded
generator, so a seeded answer does not depend on who else is in the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from reverie.model.generate import left_pad_mask, left_pad_states

__all__ = ["BASE_ADAPTER", "Batcher", "DecodeRequest"]

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

# forward(input_ids, attention_mask, position_ids, cache, adapter_names) -> logits [B, T, V]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, list[str]], torch.Tensor]


@dataclass(eq=False)
class DecodeRequest:
    """One answer to decode. ``on_token`` hears each token as it is chosen; ``should_stop``
    (checked every step) ends it early, as when the client went away."""

    prompt: Sequence[int]
    max_new_tokens: int
    adapter: str = BASE_ADAPTER
    group: str = ""  # fairness: the tenant
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_token: Callable[[int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    ids: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # admitted to the batch
    finished: float = 0.0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None


class Batcher:
    """Runs one decoding loop in a background thread over a shared model.

    ``lock`` is held for each step: whoever changes the model (loading or evicting an adapter)
    takes it too, so a step never sees a half-loaded adapter."""

    def __init__(
        self,
        forward: Forward,
        *,
        eos_id: int,
        device: torch.device,
        max_batch: int = 8,
        lock: threading.RLock | None = None,
    ) -> None:
        self.forward, self.eos_id, self.device = forward, eos_id, device
        self.max_batch = max_batch
        self.lock = lock or threading.RLock()
        self._cond = threading.Condition()
        self._waiting: list[DecodeRequest] = []
        self._rows: list[DecodeRequest] = []
        self._cache: Any = None  # a DynamicCache over the rows, left-padded
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._positions: list[int] = []  # real tokens so far per row
        self._next: list[int] = []  # the token each row feeds next
        self._thread: threading.Thread | None = None
        self._admitted: dict[str, float] = {}  # group -> when it last had a row admitted
        self._outside = 0  # threads waiting for or holding the model outside the loop

    # -- the callers' side -------------------------------------------------------------------------
    def run(self, request: DecodeRequest) -> DecodeRequest:
        """Decode ``request`` with whatever else is running; returns it once it ends."""
        return self.wait(self.submit(request))

    def submit(self, request: DecodeRequest) -> DecodeRequest:
        """Queue ``request``; it joins the batch at the next step with room."""
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if request.temperature > 0:
            request.generator = torch.Generator()
            if request.seed is not None:
                request.generator.manual_seed(request.seed)
            else:
                request.generator.seed()
        with self._cond:
            self._waiting.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="decode", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request

    def wait(self, request: DecodeRequest) -> DecodeRequest:
        """Block until ``request`` has ended; raises what failed it."""
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model between two steps (to load an adapter, then submit). The loop lets
        such a caller in before its next step: a lock alone is not fair, and a loop that takes
        it back at once would keep a new request out until the batch is empty."""
        with self._cond:
            self._outside += 1
        try:
            with self.lock:
                yield
        finally:
            with self._cond:
                self._outside -= 1
                self._cond.notify_all()

    def adapters_in_use(self) -> set[str]:
        """Adapters named by a running or waiting request (not to be evicted)."""
        with self._cond:
            return {r.adapter for r in (*self._rows, *self._waiting)}

    @property
    def running(self) -> int:
        return len(self._rows)

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._outside or (not self._waiting and not self._rows):
                    self._cond.wait()
            try:
                with self.lock, torch.no_grad():
                    self._admit()
                    if self._rows:
                        self._step()
            except BaseException as err:  # the model failed: every request in it hears why
                logger.exception("decoding failed")
                with self._cond:
                    failed, self._rows = [*self._rows, *self._waiting], []
                    self._waiting = []
                self._reset()
                for r in failed:
                    if r.done.is_set():  # it ended earlier in this step: its answer stands
                        continue
                    r.error, r.finished = err, time.perf_counter()
                    r.done.set()

    def _pick(self) -> DecodeRequest | None:
        """The next waiting request: from the group with the fewest rows running, then the one
        admitted least recently (round-robin between tenants), oldest request first."""
        with self._cond:
            if not self._waiting or len(self._rows) >= self.max_batch:
                return None
            running: dict[str, int] = {}
            for r in self._rows:
                running[r.group] = running.get(r.group, 0) + 1
            best = min(
                self._waiting,
                key=lambda r: (
                    running.get(r.group, 0),
                    self._admitted.get(r.group, float("-inf")),
                    r.submitted,
                ),
            )
            self._waiting.remove(best)
            self._admitted[best.group] = time.perf_counter()
            present = {r.group for r in (*self._rows, *self._waiting)} | {best.group}
            self._admitted = {g: t for g, t in self._admitted.items() if g in present}
            return best

    def _admit(self) -> None:
        while (request := self._pick()) is not None:
            request.started = time.perf_counter()
            try:
                if request.should_stop is not None and request.should_stop():
                    request.finished = time.perf_counter()  # gone while it waited
                    request.done.set()
                    continue
                self._prefill(request)
            except BaseException as err:  # this request's own failure (a bad adapter name...)
                request.error, request.finished = err, time.perf_counter()
                request.done.set()

    def _prefill(self, request: DecodeRequest) -> None:
        from transformers import DynamicCache

        prompt = torch.tensor([list(request.prompt)], dtype=torch.long, device=self.device)
        mask = torch.ones_like(prompt)
        positions = torch.arange(prompt.shape[1], device=self.device)[None]
        cache = DynamicCache()
        logits = self.forward(prompt, mask, positions, cache, [request.adapter])
        token = self._choose(request, logits[0, -1])
        if self._emit(request, token):
            return
        self._join(request, cache, prompt.shape[1], token)

    def _join(self, request: DecodeRequest, cache: Any, length: int, token: int) -> None:
        """Add a prefilled row to the batch: both caches left-padded to one width."""
        if self._cache is None:
            self._cache, self._mask = cache, torch.ones((1, length), dtype=torch.long)
        else:
            width = max(self._mask.shape[1], length)
            # Build every layer's tensors first: a failure (out of memory) leaves the batch as
            # it was, not half joined.
            merged = [
                (
                    torch.cat(
                        [left_pad_states(mine.keys, width), left_pad_states(theirs.keys, width)]
                    ),
                    torch.cat(
                        [left_pad_states(mine.values, width), left_pad_states(theirs.values, width)]
                    ),
                )
                for mine, theirs in zip(self._cache.layers, cache.layers, strict=True)
            ]
            row = torch.ones((1, length), dtype=torch.long)
            mask = torch.cat([left_pad_mask(self._mask, width), left_pad_mask(row, width)])
            for layer, (keys, values) in zip(self._cache.layers, merged, strict=True):
                layer.keys, layer.values = keys, values
            self._mask = mask
        self._rows.append(request)
        self._positions.append(length)
        self._next.append(token)

    def _step(self) -> None:
        n = len(self._rows)
        ids = torch.tensor(self._next, dtype=torch.long, device=self.device)[:, None]
        self._mask = torch.cat([self._mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        positions = torch.tensor(self._positions, dtype=torch.long, device=self.device)[:, None]
        logits = self.forward(
            ids,
            self._mask.to(self.device),
            positions,
            self._cache,
            [r.adapter for r in self._rows],
        )
        keep = []
        for i, request in enumerate(self._rows):
            self._positions[i] += 1
            token = self._choose(request, logits[i, -1])
            self._next[i] = token
            if not self._emit(request, token):
                keep.append(i)
        if len(keep) < n:
            self._drop(keep)

    def _emit(self, request: DecodeRequest, token: int) -> bool:
        """Record ``token``; True when the request has ended (and has been told). A callback
        that raises ends its own request with that error, not the batch."""
        request.ids.append(token)
        try:
            if request.on_token is not None:
                request.on_token(token)
            ended = (
                token == self.eos_id
                or len(request.ids) >= request.max_new_tokens
                or (request.should_stop is not None and bool(request.should_stop()))
            )
        except Exception as err:
            request.error, ended = err, True
        if ended:
            request.finished = time.perf_counter()
            request.done.set()
        return ended

    def _drop(self, keep: list[int]) -> None:
        with self._cond:
            self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._reset()
            return
        self._positions = [self._positions[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long)
        mask = self._mask[index]
        lead = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())  # columns that are padding in all
        self._mask = mask[:, lead:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index.to(layer.keys.device), :, lead:]
            layer.values = layer.values[index.to(layer.values.device), :, lead:]

    def _reset(self) -> None:
        self._cache, self._mask = None, torch.zeros((0, 0), dtype=torch.long)
        self._positions, self._next = [], []

    def _choose(self, request: DecodeRequest, logits: torch.Tensor) -> int:
        if request.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / request.temperature, dim=-1).cpu()
        if request.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= request.top_p  # first always kept
            sorted_probs[outside] = 0.0
            pick = torch.multinomial(sorted_probs, 1, generator=request.generator)
            return int(order[pick])
        return int(torch.multinomial(probs, 1, generator=request.generator))
