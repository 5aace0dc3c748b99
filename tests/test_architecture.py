"""The walls between the floors of the house, checked on the source (``ast``, every import: at the top,
inside functions, under ``if TYPE_CHECKING:``), and the one list of saga kinds.

Floors, top to bottom: ``app`` (the composition root: CLI, demo, wiring) -> ``flows`` -> ``tasks`` ->
``sagas`` (the core). A floor imports only what is below it, with two seams inside the core that
must never be crossed either way: the simulator and the client (each is checked against the
official spec on its own, so neither can hide the other's mistake), and the ledger and the client.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from flows import FLOWS
from tasks.registry import catalog
from tests.conftest import REPO

PACKAGES = ("app", "sagas", "flows", "tasks", "deployments", "benchmarks", "tests")

SIMULATOR = ("sagas.digitalocean.simulator",)
CLIENT = (
    "sagas.digitalocean.client",
    "sagas.digitalocean.transport",
    "sagas.digitalocean.responses",
    "sagas.digitalocean.models",
    "sagas.digitalocean.ratelimit",
    "sagas.digitalocean.shared_budget",
)
LEDGER = ("sagas.ledger",)

# (who, may not import, why)
WALLS: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("sagas",), ("prefect", "flows", "tasks", "deployments", "app"), "the core imports nothing above it"),
    (("tasks",), ("flows", "app", "deployments"), "steps do not know the flows that run them"),
    (("flows",), ("app.cli", "app.demo", "app.running", "deployments"), "flows are run, not running"),
    (SIMULATOR, CLIENT, "the simulator shares no code with the client"),
    (CLIENT, SIMULATOR, "the client shares no code with the simulator"),
    (LEDGER, ("sagas.digitalocean",), "the ledger and the provider never meet"),
    (CLIENT, LEDGER, "the ledger and the provider never meet"),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_tree(root: Path) -> dict[str, str]:
    """Every project module's source, by dotted name."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            sources[module_name(path, root)] = path.read_text()
    return sources


def imports_of(module: str, source: str, known: Iterable[str]) -> set[str]:
    """The modules ``module`` imports anywhere in its source, as dotted names (``from a import b``
    names the module ``a.b`` when that is a module, else ``a``)."""
    known = set(known)
    package = module if _is_package(module, source) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return found


def _is_package(module: str, source: str) -> bool:
    return (REPO / module.replace(".", "/") / "__init__.py").exists()


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def wall_breaches(sources: Mapping[str, str]) -> list[str]:
    breaches = []
    for module, source in sources.items():
        for imported in sorted(imports_of(module, source, sources)):
            for who, forbidden, why in WALLS:
                if _within(module, who) and _within(imported, forbidden):
                    breaches.append(f"{module} imports {imported}: {why}")
    return breaches


def import_cycles(sources: Mapping[str, str]) -> list[list[str]]:
    """Every circle of imports among the project's modules (Tarjan's strongly connected components)."""
    graph = {
        m: sorted(i for i in imports_of(m, s, sources) if i in sources and i != m) for m, s in sources.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_module_crosses_a_wall() -> None:
    assert wall_breaches(read_tree(REPO)) == []


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    assert import_cycles(read_tree(REPO)) == []


def test_the_walls_check_catches_a_new_arrow_of_every_forbidden_kind() -> None:
    """The checks can fail: each forbidden arrow, added to the real tree, is reported."""
    tree = read_tree(REPO)
    arrows = {
        "sagas.runner": "from flows.saga_flow import saga_flow\n",
        "sagas.ledger.fenced": "def f():\n    import prefect\n",
        "sagas.steps": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.wiring import App\n",
        "tasks.snapshots": "from flows import flow_for\n",
        "sagas.digitalocean.simulator.world": "from sagas.digitalocean.models import Droplet\n",
        "sagas.digitalocean.client": "from sagas.ledger.store import Ledger\n",
        "sagas.ledger.queries": "from sagas.digitalocean.client import DigitalOceanClient\n",
    }
    for module, line in arrows.items():
        breached = wall_breaches({**tree, module: tree[module] + "\n" + line})
        assert any(b.startswith(f"{module} imports") for b in breached), (module, breached)


def test_the_circle_check_catches_a_lazy_import_that_closes_a_circle() -> None:
    tree = read_tree(REPO)
    circled = {
        **tree,
        "sagas.models": tree["sagas.models"] + "\ndef f():\n    from sagas.runner import Runner\n",
    }
    assert ["sagas.models", "sagas.runner"] in [
        [m for m in cycle if m in ("sagas.models", "sagas.runner")] for cycle in import_cycles(circled)
    ]


def test_the_registry_is_the_one_list_of_kinds() -> None:
    """Every kind has a flow and a deployment of its name, and nothing else does."""
    kinds = set(catalog().kind_names)
    assert set(FLOWS) == kinds
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    by_name = {d["name"]: d["entrypoint"] for d in deployments}
    for kind in kinds:
        module, attribute = FLOWS[kind]
        assert by_name.get(kind) == f"{module.replace('.', '/')}.py:{attribute}", kind
    scheduled = {"recovery-sweep", "fleet-snapshot", "finish-saga"}
    assert set(by_name) - kinds == scheduled
