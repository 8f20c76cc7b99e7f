"""The documentation stays true: the configuration page matches the schema, and the pages link to files that exist."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config_docs():
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_generated_from_the_schema():
    from bertcls.config import Config

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == _config_docs().render(), "docs/configuration.md is out of date: run python scripts/config_docs.py"
    flat = []
    for section, field in Config.model_fields.items():
        inner = getattr(field.annotation, "model_fields", None)
        flat += [f"{section}.{key}" for key in inner] if inner else [section]
    assert all(f"| `{key}` |" in page for key in flat)  # every key has its row


def test_readme_and_docs_link_only_to_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
