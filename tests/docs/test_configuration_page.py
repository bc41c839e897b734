"""docs/configuration.md is generated from Config: every option documented, none stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_page_matches_config() -> None:
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts/config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs/configuration.md").read_text()
    assert page == module.render(), (
        "docs/configuration.md is stale: run "
        ".venv/bin/python scripts/config_docs.py > docs/configuration.md"
    )
