"""The short-term buffer: real FAISS, real SQLite, crash-style index damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reverie.memory.buffer import Buffer
from reverie.memory.config import BufferSettings
from reverie.memory.errors import IntegrityError
from reverie.memory.experience import Experience, make_experience
from reverie.memory.stream import Position

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exps(tenant: str, n: int, start: int = 0) -> list[Experience]:
    return [
        make_experience(f"fact {i}", tenant=tenant, id=f"e{i}") for i in range(start, start + n)
    ]


def open_buffer(path: Path, **settings: object) -> Buffer:
    return Buffer(path, dim=DIM, embedder_name="test", settings=BufferSettings(**settings))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_search_finds_the_nearest_and_scores_cosine(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 50)
    buf.add_many(exps("a", 50), vectors, [Position(0, i) for i in range(50)])
    hits = buf.search("a", vectors[17], k=3)
    assert hits[0].experience.id == "e17"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    stored = buf.get("a", "e17")
    assert stored is not None and stored.position == Position(0, 17)
    buf.close()


def test_add_is_idempotent_per_tenant_and_id(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    assert buf.add_many(exps("a", 2), unit(rng, 2)) == [True, True]
    assert buf.add_many(exps("a", 3), unit(rng, 3)) == [False, False, True]
    assert buf.add_many(exps("b", 1), unit(rng, 1)) == [True]  # same id, other tenant
    assert buf.stats() == {
        "a": {"total": 3, "buffered": 3, "consolidated": 0, "unconsolidated": 0},
        "b": {"total": 1, "buffered": 1, "consolidated": 0, "unconsolidated": 0},
    }
    buf.close()


def test_tenants_never_see_each_other(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    v = unit(rng, 1)
    buf.add_many([make_experience("alice secret", tenant="alice", id="x")], v)
    buf.add_many([make_experience("bob note", tenant="bob", id="y")], unit(rng, 1))
    assert [h.experience.tenant for h in buf.search("bob", v[0], k=10)] == ["bob"]
    assert buf.search("carol", v[0], k=10) == []
    assert buf.get("bob", "x") is None
    buf.close()


def test_delete_removes_and_blocks_replays(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 3)
    buf.add_many(exps("a", 3), vectors)
    assert buf.delete("a", "e1") is True
    assert buf.delete("a", "e1") is False
    assert "e1" not in [h.experience.id for h in buf.search("a", vectors[1], k=3)]
    assert buf.add_many(exps("a", 3), vectors) == [False, False, False]  # a replay
    assert buf.is_forgotten("a", "e1")
    buf.close()


def test_mark_and_filter_by_status(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 4)
    buf.add_many(exps("a", 4), vectors)
    assert buf.mark("a", ["e0", "e2"], "consolidated", version="v0001") == 2
    pending = buf.experiences("a", status="buffered")
    assert [s.experience.id for s in pending] == ["e1", "e3"]
    hits = buf.search("a", vectors[0], k=4, status="buffered")
    assert {h.experience.id for h in hits} == {"e1", "e3"}
    stored = buf.get("a", "e0")
    assert stored is not None and stored.version == "v0001"
    buf.close()


def test_missing_index_file_is_rebuilt_from_sqlite(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 20)
    buf.add_many(exps("a", 20), vectors)
    buf.search("a", vectors[0])
    buf.close()
    for f in (tmp_path / "index").iterdir():
        f.unlink()
    buf = open_buffer(tmp_path)
    assert buf.search("a", vectors[5], k=1)[0].experience.id == "e5"
    buf.close()


def test_corrupt_index_file_is_rebuilt(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 5)
    buf.add_many(exps("a", 5), vectors)
    buf.close()
    (tmp_path / "index" / "a.index").write_bytes(b"\x00\x00\x00\x00\x00\x00\x00\x02{}garbage")
    buf = open_buffer(tmp_path)
    assert buf.search("a", vectors[3], k=1)[0].experience.id == "e3"
    buf.close()


def test_index_with_flipped_bytes_is_rebuilt_not_used(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Flipped bytes inside the stored vectors would give wrong hits and absurd scores; the
    checksum catches them and the index is rebuilt from the rows."""
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 50)
    buf.add_many(exps("a", 50), vectors)
    buf.search("a", vectors[0])
    buf.close()
    path = tmp_path / "index" / "a.index"
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64, 4):
        data[i] ^= 0x7F  # inside the float data
    path.write_bytes(bytes(data))
    buf = open_buffer(tmp_path)
    hits = [buf.search("a", vectors[i], k=1)[0] for i in range(50)]
    assert [h.experience.id for h in hits] == [f"e{i}" for i in range(50)]
    assert max(h.score for h in hits) <= 1.0 + 1e-4
    buf.close()


def test_another_tenants_index_copied_in_is_rebuilt(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    buf = open_buffer(tmp_path)
    va, vb = unit(rng, 5), unit(rng, 5)
    buf.add_many(exps("a", 5), va)
    buf.add_many(exps("b", 5), vb)
    buf.search("a", va[0]), buf.search("b", vb[0])
    buf.close()
    index = tmp_path / "index"
    (index / "a.index").write_bytes((index / "b.index").read_bytes())
    buf = open_buffer(tmp_path)
    assert [buf.search("a", va[i], k=1)[0].experience.id for i in range(5)] == [
        f"e{i}" for i in range(5)
    ]
    assert all(h.experience.tenant == "a" for h in buf.search("a", vb[0], k=5))
    buf.close()


def test_stale_index_catches_up(tmp_path: Path, rng: np.random.Generator) -> None:
    """An index saved before later rows (a crash before the next save) gains the missing rows."""
    buf = open_buffer(tmp_path)
    vectors = unit(rng, 10)
    buf.add_many(exps("a", 5), vectors[:5])
    buf.search("a", vectors[0])
    buf.flush()
    saved = (tmp_path / "index" / "a.index").read_bytes()
    buf.add_many(exps("a", 5, start=5), vectors[5:])
    buf.close()
    (tmp_path / "index" / "a.index").write_bytes(saved)  # as if the last save never happened
    buf = open_buffer(tmp_path)
    assert buf.search("a", vectors[8], k=1)[0].experience.id == "e8"
    assert len(buf.search("a", vectors[8], k=10)) == 10  # nothing twice
    buf.close()


def test_two_handles_see_each_others_writes(tmp_path: Path, rng: np.random.Generator) -> None:
    one, two = open_buffer(tmp_path), open_buffer(tmp_path)
    vectors = unit(rng, 2)
    one.add_many(exps("a", 1), vectors[:1])
    assert two.search("a", vectors[0], k=1)[0].experience.id == "e0"
    two.add_many(exps("a", 1, start=1), vectors[1:])
    assert one.search("a", vectors[1], k=1)[0].experience.id == "e1"
    two.delete("a", "e0")
    assert [h.experience.id for h in one.search("a", vectors[0], k=5)] == ["e1"]
    one.close()
    two.close()


def test_hnsw_past_threshold_keeps_recall(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path, hnsw_threshold=200)
    vectors = unit(rng, 400)
    buf.add_many(exps("a", 100), vectors[:100])
    buf.search("a", vectors[0])
    assert buf.index_kind("a") == "flat"
    buf.add_many(exps("a", 300, start=100), vectors[100:])
    found = sum(buf.search("a", vectors[i], k=1)[0].experience.id == f"e{i}" for i in range(400))
    assert buf.index_kind("a") == "hnsw"
    assert found >= 396  # approximate search, but near-exact at this size
    # Deletes are filtered out even though HNSW cannot remove them.
    buf.delete("a", "e7")
    assert "e7" not in [h.experience.id for h in buf.search("a", vectors[7], k=5)]
    buf.close()


def test_different_embedder_is_refused(tmp_path: Path) -> None:
    open_buffer(tmp_path).close()
    with pytest.raises(IntegrityError, match="embedder"):
        Buffer(tmp_path, dim=DIM + 1, embedder_name="other")


def test_rejections_count_until_unconsolidated(tmp_path: Path, rng: np.random.Generator) -> None:
    buf = open_buffer(tmp_path)
    buf.add_many(exps("a", 2), unit(rng, 2))
    efficacy = {"outcome": "rejected_efficacy", "max_attempts": 2}
    assert buf.record_rejection("a", ["e0", "e1"], "efficacy 0.1 < 0.5", **efficacy) == []
    locality = {"outcome": "rejected_locality", "max_attempts": 2}
    assert buf.record_rejection("a", ["e0"], "locality 0.8 < 0.9", **locality) == ["e0"]
    e0, e1 = buf.get("a", "e0"), buf.get("a", "e1")
    assert e0 is not None and e0.status == "unconsolidated" and e0.attempts == 2
    assert e0.note == "locality 0.8 < 0.9" and e0.outcome == "rejected_locality"
    assert e1 is not None and e1.status == "buffered" and e1.attempts == 1
    assert e1.outcome == "rejected_efficacy"
    assert [h.experience.id for h in buf.search("a", unit(rng, 1)[0], k=2)] != []  # recallable
    buf.close()


def test_the_embedders_dimension_is_read_from_its_configs(tmp_path: Path) -> None:
    import json as _json

    from reverie.memory.embedder import dimension_on_disk, resolve_model_dir

    assert dimension_on_disk(resolve_model_dir("all-MiniLM-L6-v2")) == 384

    def directory(modules: list[tuple[str, str, dict[str, object]]]) -> Path:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        root.mkdir()
        entries = []
        for i, (kind, path, config) in enumerate(modules):
            (root / path).mkdir(parents=True, exist_ok=True)
            (root / path / "config.json").write_text(_json.dumps(config))
            entries.append({"idx": i, "name": str(i), "path": path, "type": kind})
        (root / "modules.json").write_text(_json.dumps(entries))
        return root

    pooling = "sentence_transformers.models.Pooling"
    both = {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": True}  # fmt: skip
    assert dimension_on_disk(directory([(pooling, "1_Pooling", both)])) == 128
    dense = ("sentence_transformers.models.Dense", "2_Dense", {"out_features": 32})
    assert dimension_on_disk(directory([(pooling, "1_Pooling", both), dense])) == 32
    odd = {"word_embedding_dimension": 64, "pooling_mode_weightedmean_tokens": True}
    assert dimension_on_disk(directory([(pooling, "1_Pooling", odd)])) is None  # loads to know
    assert dimension_on_disk(tmp_path / "missing") is None


def test_the_embedder_loads_its_model_on_first_use() -> None:
    from reverie.memory.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    assert embedder._model is None and embedder.dim == 384
    vectors = embedder.embed(["hello"])
    assert vectors.shape == (1, 384) and embedder._model is not None


def test_oldest_buffered_is_the_earliest_logged_per_tenant(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    buffer = Buffer(tmp_path / "b", dim=4, embedder_name="fake", settings=BufferSettings())
    before = datetime.now(UTC)
    first = make_experience("first", tenant="t", id="a")
    buffer.add(first, np.eye(4, dtype=np.float32)[0])
    buffer.add(make_experience("second", tenant="t", id="b"), np.eye(4, dtype=np.float32)[1])
    oldest = buffer.oldest_buffered()
    assert set(oldest) == {"t"} and before <= oldest["t"] <= datetime.now(UTC)
    buffer.close()


def test_the_mean_pooled_path_embeds_as_sentence_transformers_does() -> None:
    from sentence_transformers import SentenceTransformer

    from reverie.memory.embedder import SentenceTransformerEmbedder, resolve_model_dir
    from reverie.memory.pooled import MeanPooled, mean_pooled_layout

    path = resolve_model_dir("all-MiniLM-L6-v2")
    assert mean_pooled_layout(path) == 256
    texts = ["The spare key is under the blue flowerpot.", "hi", "Rent is due on the 3rd. " * 80]
    reference = SentenceTransformer(str(path), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=2
    )
    embedder = SentenceTransformerEmbedder()
    ours = embedder.embed(texts)
    assert isinstance(embedder._model, MeanPooled)
    assert np.allclose(ours, reference, atol=1e-5)  # long text truncated the same way too
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
