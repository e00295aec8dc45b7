"""The HTML retention report from real cycles on the tiny model: what it holds, that it is
self-contained and escaped, that the server serves it to the token's tenant, and that a real
headless Chromium renders its tables and charts (a screenshot is kept as a test artifact)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reverie.agent import MemoryClient
from reverie.consolidator.cycle import Consolidator
from reverie.settings import Settings
from tests.test_cycle import FACTS, settings_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("REVERIE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
BLUE = (31, 119, 180)  # the first series' colour in both charts


@pytest.fixture
def reported(tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any) -> Any:
    """Alice with a promoted version, then a rejected one, and a buffered experience."""
    settings = settings_for(tmp_path, tiny_model_dir)
    client = MemoryClient(settings, embedder=embedder)
    for eid, text in FACTS:
        client.log(text, tenant="alice", id=eid)
    assert Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle("alice").version
    client.log("<b>Rex</b> the dog buries sticks under the oak.", tenant="alice", id="rex")
    strict = Settings.model_validate(
        {**settings.model_dump(), "gate": {**settings.gate.model_dump(), "min_efficacy": 1.0}}
    )
    rejected = Consolidator(strict, buffer=client.buffer, base=tiny_base).run_cycle("alice")
    assert rejected.outcome == "rejected_efficacy"
    yield client
    client.close()


def test_the_page_holds_versions_answers_charts_and_the_buffer(reported: MemoryClient) -> None:
    html = reported.retention_report("alice", format="html")
    for ident in ("versions", "facts", "answers", "buffer", "forgetting", "gate"):
        assert f"id='{ident}'" in html
    assert "v0001 (live)" in html and "rejected_efficacy" in html
    assert "efficacy/ceiling" in html or "efficacy / ceiling" in html
    assert "Gate thresholds: min_efficacy 0.00, min_retention 0.00" in html  # the open gate
    assert "&lt;b&gt;Rex&lt;/b&gt;" in html and "<b>Rex" not in html  # text is escaped
    assert "<script" not in html and not re.search(r"(src|href)=['\"]?https?:", html)
    assert html.count("class='threshold'") == 4  # each gate score's threshold line
    for eid, _ in FACTS:
        assert f"<td>{eid}</td>" in html


def test_the_server_serves_the_page_to_the_tokens_tenant(reported: MemoryClient) -> None:
    from fastapi.testclient import TestClient

    from reverie.agent.auth import TokenStore
    from reverie.agent.server import create_app

    tokens = TokenStore(reported.settings.data_dir)
    alice, bob = tokens.create("alice"), tokens.create("bob")
    tokens.close()
    with TestClient(create_app(reported)) as http:
        page = http.get(
            "/v1/reports/retention?format=html", headers={"Authorization": f"Bearer {alice}"}
        )
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "tenant <code>alice</code>" in page.text
        other = http.get(
            "/v1/reports/retention?format=html", headers={"Authorization": f"Bearer {bob}"}
        )
        assert "Teodor" not in other.text  # bob's page shows nothing of alice's
        bad = http.get(
            "/v1/reports/retention?format=pdf", headers={"Authorization": f"Bearer {alice}"}
        )
        assert bad.status_code == 400 and "format" in bad.text


def test_headless_chromium_renders_the_tables_and_the_charts(
    reported: MemoryClient, tmp_path: Path
) -> None:
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "report.html"
    page.write_text(reported.retention_report("alice", format="html"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    # The browser parsed every table and drew both charts' series and threshold lines.
    assert dom.count("<table") == 4 and dom.count("<svg") == 2
    assert dom.count("<polyline") >= 2 and dom.count('class="threshold"') == 4
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "retention-report.png"
    subprocess.run(
        [*flags, "--window-size=1200,1800", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1800)
    colours = image.getcolors(maxcolors=1 << 24) or []
    blue = sum(n for n, c in colours if all(abs(a - b) <= 12 for a, b in zip(c, BLUE, strict=True)))
    assert blue > 200  # the charts' lines and points were painted, not just laid out
    assert len(colours) > 20  # text, tables, colours
