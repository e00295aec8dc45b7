"""The ``reverie`` command as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Broker, unique


def reverie(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "REVERIE_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "reverie", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_log_recall_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for text in [
        "The spare key is under the blue flowerpot.",
        "Maria's birthday is on the 12th of June.",
    ]:
        out = reverie("log", "--tenant", "alice", text, data_dir=data)
        assert out.returncode == 0, out.stderr
    reverie(
        "log", "--tenant", "bob", "Bob parks on level 3.", "--created-at", "2026-01-02T08:00:00Z",
        data_dir=data,
    )  # fmt: skip
    out = reverie("list", "--tenant", "bob", "--json", data_dir=data)
    [bob] = json.loads(out.stdout)["experiences"]
    assert bob["created_at"].startswith("2026-01-02T08:00:00") and bob["status"] == "buffered"
    out = reverie("recall", "--tenant", "alice", "where is the spare key", "--json", data_dir=data)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert hits[0]["experience"]["text"] == "The spare key is under the blue flowerpot."
    assert {h["experience"]["tenant"] for h in hits} == {"alice"}
    out = reverie("status", "--json", data_dir=data)
    tenants = json.loads(out.stdout)["tenants"]
    assert tenants["alice"]["total"] == 2 and tenants["bob"]["total"] == 1


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["log", "--tenant", "alice", ""], {}, "text"),
        (["log", "--tenant", "alice", "x" * 32_001], {}, "text"),
        (["log", "--tenant", "bad tenant!", "hello"], {}, "tenant"),
        (["log", "--tenant", "alice", "hello", "--metadata", "{not json"], {}, "metadata"),
        (["log", "--tenant", "alice", "hello", "--metadata", "[1, 2]"], {}, "metadata"),
        (
            ["log", "--tenant", "alice", "hello", "--metadata", json.dumps({"k": "x" * 17_000})],
            {},
            "metadata",
        ),
        (
            ["log", "--tenant", "alice", "hello", "--metadata", "[" * 5000 + "]" * 5000],
            {},
            "metadata",
        ),
        (
            ["log", "--tenant", "alice", "hello", "--metadata", '{"score": NaN}'],
            {},
            "metadata",
        ),
        (
            ["log", "--tenant", "alice", "hello"],
            {"REVERIE_STREAM__PARTITON": "2"},
            "REVERIE_STREAM__PARTITON",
        ),
        (
            ["log", "--tenant", "alice", "hello"],
            {"REVERIE_STREAM__PARTITIONS": "0"},
            "stream.partitions",
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], field: str
) -> None:
    data = tmp_path / "data"
    out = reverie(*args, "--json", data_dir=data, env=env)
    assert out.returncode == 2, out.stderr
    assert field in out.stderr
    assert json.loads(out.stdout)["field"] == field
    assert not data.exists()  # rejected before anything was opened


def test_unknown_toml_key_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "reverie.toml"
    config.write_text("[buffer]\nhnsw_treshold = 5\n")
    out = reverie("--config", str(config), "status", data_dir=tmp_path / "data")
    assert out.returncode == 2
    assert "buffer.hnsw_treshold" in out.stderr


def test_forget_unknown_id_exits_1(tmp_path: Path) -> None:
    out = reverie("forget", "--tenant", "alice", "nope", data_dir=tmp_path / "data")
    assert out.returncode == 1
    assert "no experience 'nope'" in out.stderr


@pytest.mark.kafka
def test_commands_write_to_kafka(tmp_path: Path, kafka: Broker) -> None:
    topic = unique("cli")
    env = {"REVERIE_STREAM__BOOTSTRAP_SERVERS": kafka.bootstrap, "REVERIE_STREAM__TOPIC": topic}
    data = tmp_path / "data"
    out = reverie(
        "log",
        "--tenant",
        "alice",
        "The boat is moored at pier 9.",
        "--id",
        "boat",
        "--json",
        data_dir=data,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    out = reverie(
        "recall", "--tenant", "alice", "where is the boat", "--json", data_dir=data, env=env
    )
    assert json.loads(out.stdout)[0]["experience"]["id"] == "boat"

    from kafka import KafkaConsumer  # a plain consumer, none of our code

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[kafka.bootstrap],
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    raw = [m.value for m in consumer]
    consumer.close()
    values = [json.loads(r) for r in raw]
    # On the wire: who and which id in the clear, the experience sealed (stream.seal).
    assert [(v["tenant"], v["id"], v["kind"]) for v in values] == [("alice", "boat", "experience")]
    assert "experience" not in values[0] and set(values[0]["sealed"]) == {"kid", "box"}
    assert b"pier 9" not in raw[0]


def test_commands_that_read_the_data_dir_load_no_model(tmp_path: Path) -> None:
    """status, list, forget, adapters, tokens and report import neither torch nor a model
    library (seconds of start-up); arguments are refused before any model loads."""
    data = tmp_path / "data"
    logged = reverie("log", "--tenant", "alice", "The key is under the mat.", data_dir=data)
    assert logged.returncode == 0, logged.stderr
    eid = logged.stdout.split()[1]
    heavy = ("torch", "transformers", "sentence_transformers")
    commands = [
        ["status"],
        ["list", "--tenant", "alice"],
        ["adapters", "list", "--tenant", "alice"],
        ["tokens", "list"],
        ["report", "--tenant", "alice"],
        ["recall", "--tenant", "alice", "-k", "500", "key"],
        ["forget", "--tenant", "alice", eid],
    ]
    for args in commands:
        out = reverie(*args, data_dir=data, env={"PYTHONPROFILEIMPORTTIME": "1"})
        imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
        assert not imported & set(heavy), (args, imported & set(heavy))
        assert "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    out = reverie("list", "--tenant", "alice", "--json", data_dir=data)
    assert json.loads(out.stdout)["experiences"] == []  # the forget above took effect
    # recall itself loads the embedder on torch alone: MiniLM's encoder is a plain BERT
    out = reverie("recall", "--tenant", "alice", "key", data_dir=data,
                  env={"PYTHONPROFILEIMPORTTIME": "1"})  # fmt: skip
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert out.returncode == 0 and "torch" in imported
    assert not imported & {"transformers", "sentence_transformers"}


def test_serve_on_a_busy_port_says_so_in_one_line_and_exits_3(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = reverie("serve", "--port", str(port), data_dir=tmp_path / "data")
    assert out.returncode == 3
    assert f"127.0.0.1:{port} is in use" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_consolidate_reports_each_stage_and_ends_with_a_table(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = tmp_path / "reverie.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[model]\nbase = "{tiny_model_dir}"\n'
        'max_new_tokens = 8\n[transfer]\nstrategies = ["verbatim"]\n'
        "max_items_per_experience = 2\n[train]\nepochs = 1\nlora_r = 2\n"
        'target_modules = ["q_proj"]\n[consolidation]\nanchor_ratio = 0.0\ncontrol_budget = 4\n'
        "[gate]\nmin_efficacy = 0.0\nmin_retention = 0.0\nmin_locality = 0.0\n"
        "min_raw_locality = 0.0\n"
    )
    env = {"REVERIE_CONFIG": str(config)}
    for text in ["The spare key is under the blue flowerpot.", "Rent is due on the 3rd."]:
        logged = reverie("log", "--tenant", "alice", text, data_dir=tmp_path / "data", env=env)
        assert logged.returncode == 0, logged.stderr
    out = reverie("consolidate", "--once", data_dir=tmp_path / "data", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[:7] == ["tenant", "outcome", "version", "exp", "eff/ceil", "locality",
                                  "retention"]  # fmt: skip
    assert row.split()[:4] == ["alice", "promoted", "v0001", "2"]
    for stage in ("transfer", "teacher", "train", "probe"):
        assert f"stage {stage}: started" in out.stderr
    assert "FutureWarning" not in out.stderr and "Loading weights" not in out.stderr


def test_report_of_an_unknown_tenant_is_an_error_and_writes_no_plot(tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    out = reverie("report", "--tenant", "nobody", "--plot", str(plot), data_dir=tmp_path / "d")
    assert out.returncode == 1 and "no adapter versions" in out.stderr
    assert not plot.exists()
