"""The adapter router: the rule (pure), and the file it lives in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reverie.memory.errors import IntegrityError
from reverie.memory.router import ROUTER_FILE, Router, load_router, save_router


def unit(*rows: list[float]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_a_question_routes_when_some_key_is_within_the_threshold() -> None:
    router = Router(unit([1, 0, 0], [0, 1, 0]), threshold=0.8, embedder="e")
    queries = unit([1, 0.1, 0], [0.7, 0.7, 0], [0, 0, 1])
    assert router.scores(queries).round(3).tolist() == pytest.approx([0.995, 0.707, 0.0], abs=1e-3)
    assert router.routes(queries).tolist() == [True, False, False]
    wider = Router(router.keys, threshold=0.7, embedder="e")
    assert wider.routes(queries).tolist() == [True, True, False]


def test_no_keys_routes_nothing() -> None:
    router = Router(np.zeros((0, 3), np.float32), threshold=-1.0 + 1e-6, embedder="e")
    assert router.routes(unit([1, 0, 0])).tolist() == [False]


def test_saved_and_loaded_as_it_was(tmp_path: Path) -> None:
    router = Router(unit([1, 2, 3], [3, 2, 1]), 0.45, "all-MiniLM-L6-v2")
    save_router(router, tmp_path)
    loaded = load_router(tmp_path, "all-MiniLM-L6-v2")
    assert loaded is not None
    assert np.array_equal(loaded.keys, router.keys)
    assert (loaded.threshold, loaded.embedder) == (pytest.approx(0.45), "all-MiniLM-L6-v2")
    assert load_router(tmp_path / "none") is None  # a version written before routing existed
    with pytest.raises(IntegrityError, match="embedder"):
        load_router(tmp_path, "another-embedder")
    assert (tmp_path / ROUTER_FILE).exists()
