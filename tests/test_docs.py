"""The README and docs/ describe the code that exists: every module has its row, every link leads
somewhere, every kind and step of the registry is in the README's tables."""

from __future__ import annotations

import re

from flows import FLOWS
from tasks.registry import catalog
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
# Modules a reader finds through a pattern or a package row rather than by name.
BY_PATTERN = {f"flows/{kind}.py" for kind in FLOWS} | {"flows/testing.py", "app/cli/__main__.py"}


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_what_is_here_names_every_module_of_app_flows_tasks_and_the_core() -> None:
    table = _section(README, "What is here")
    folders = [
        "app",
        "app/cli",
        "flows",
        "tasks",
        "sagas",
        "sagas/ledger",
        "sagas/operator",
        "sagas/digitalocean",
    ]
    missing = []
    for folder in folders:
        for path in sorted((REPO / folder).glob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if path.name == "__init__.py" or relative in BY_PATTERN:
                continue
            if f"`{relative}`" not in table and f"`{path.name}`" not in table:
                missing.append(relative)
    assert missing == [], f"README's 'What is here' does not name: {missing}"


def test_the_readme_tables_list_every_kind_and_every_step_of_the_registry() -> None:
    registry = catalog()
    for kind in registry.kind_names:
        assert f"| `{kind}` |" in README, kind
        steps = registry.kind(kind).steps or ()
        row = next(line for line in README.splitlines() if line.startswith(f"| `{kind}` |"))
        assert [s for s in steps if f"`{s}`" not in row] == [], row
    for step in registry.step_names:
        assert re.search(rf"^\| [^|]*`{step}`", README, re.MULTILINE), step


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file() -> None:
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to {target}"


def test_the_contract_is_in_the_repository_and_the_readme_points_to_it() -> None:
    contract = (REPO / "docs" / "contract.md").read_text()
    assert "[docs/contract.md](docs/contract.md)" in README
    assert "shared folder" not in README
    for status in ("pending", "running", "completed", "compensating", "rolled_back", "compensation_failed"):
        assert f"`{status}`" in contract
    assert "awaiting_approval" in contract
    assert "**The point of no return is the pivot's write, not its completion.**" in contract
