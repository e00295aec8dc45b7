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


def test_a_question_nearer_a_negative_than_any_key_stays_off() -> None:
    keys = unit([1, 0, 0])
    queries = unit([1, 0.1, 0], [1, 0.9, 0], [0, 0, 1])  # cosine to the key: 0.995, 0.74, 0
    plain = Router(keys, threshold=0.7, embedder="e")
    assert plain.routes(queries).tolist() == [True, True, False]
    negatives = unit([0.6, 1, 0])  # a general question on the same topic
    router = Router(keys, threshold=0.7, embedder="e", negatives=negatives)
    assert router.routes(queries).tolist() == [True, False, False]
    # the margin asks for more distance from the negatives; a negative one for less
    cos = float(queries[0] @ keys[0] - queries[0] @ negatives[0])
    strict = Router(keys, 0.7, "e", negatives, margin=cos + 0.01)
    assert strict.routes(queries).tolist() == [False, False, False]
    lenient = Router(keys, 0.7, "e", negatives, margin=-0.25)
    assert lenient.routes(queries).tolist() == [True, True, False]
    assert router.routes(np.zeros((0, 3), np.float32)).tolist() == []


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
    assert loaded.negatives is None  # written without negatives


def test_a_router_written_before_negatives_existed_loads(tmp_path: Path) -> None:
    keys = unit([1, 2, 3])
    np.savez(tmp_path / ROUTER_FILE, keys=keys, threshold=np.float64(0.45), embedder=np.array("e"))
    loaded = load_router(tmp_path, "e")
    assert loaded is not None and loaded.negatives is None and loaded.margin == 0.0
    assert loaded.routes(unit([1, 2, 3.1], [-1, 0, 0])).tolist() == [True, False]


def test_negatives_and_margin_are_saved_with_the_keys(tmp_path: Path) -> None:
    router = Router(unit([1, 2, 3]), 0.45, "e", negatives=unit([3, 2, 1], [0, 1, 0]), margin=0.05)
    save_router(router, tmp_path)
    loaded = load_router(tmp_path, "e")
    assert loaded is not None and loaded.negatives is not None
    assert np.array_equal(loaded.negatives, router.negatives)
    assert loaded.margin == pytest.approx(0.05)
    queries = unit([1, 2, 3.1], [3, 2, 1.1], [0, 1, 0.2])
    assert loaded.routes(queries).tolist() == router.routes(queries).tolist()
