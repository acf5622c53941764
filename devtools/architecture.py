"""``docs/architecture.md``, generated from the packages' and modules' own docstrings and
from the imports between the gateway's parts (``python -m devtools.architecture >
docs/architecture.md``; ``tests/test_docs.py`` fails when the page is stale).

The prose around the generated parts lives in ``architecture.template.md``; the rules of
the layers are the ones ``tests/test_packages.py`` enforces, through :func:`imports_of`.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("architecture.template.md")
OURS = ("gateway", "retrain", "flywheel_stack")

# The parts in reading order: (folder, what a reader should know before its modules).
PARTS = [
    ("gateway/core", "imports nothing else of Flywheel"),
    ("gateway/serving", "imports the core and reads the live state (never a control writer)"),
    ("gateway/control", "imports the core, and the upstream client and metrics of serving"),
    ("gateway/ops", "imports only the core"),
    ("gateway/admin", "reached only from the composition root"),
    ("gateway/console", "reached only from the composition root"),
    ("gateway", "the composition root: the app's lifespan, its typed state, the command line"),
    ("retrain", "imports the gateway's core and data operations, never serving or control"),
    ("flywheel_stack", "the local stack both command lines and the tests start"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(folder: str) -> dict[str, set[str]]:
    """Module → the Flywheel modules it imports at run time, for every module under
    ``folder`` (``TYPE_CHECKING`` blocks are left out: a type is not a dependency).
    ``from gateway.core import keys`` counts as an import of ``gateway.core.keys``; a
    relative import (``from .dataset import Builder``) counts as its absolute name."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        names: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.split(".")[0] in OURS}
            elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
                source = _absolute(module_name(path), path.name == "__init__.py", node)
                if source.split(".")[0] not in OURS:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    as_path = REPO / sub.replace(".", "/")
                    is_module = as_path.with_suffix(".py").exists() or as_path.is_dir()
                    names.add(sub if is_module else source)
        found[module_name(path)] = names
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of what ``node`` imports from, in ``module``: ``from .x import y``
    in ``retrain.cycle`` → ``retrain.x``; ``from . import y`` → ``retrain``."""
    if not node.level:
        return node.module or ""
    pieces = module.split(".")
    drop = node.level - 1 if is_package else node.level
    base = pieces[: len(pieces) - drop]
    return ".".join(base + ([node.module] if node.module else []))


def part(module: str) -> str:
    """``gateway.core.keys`` → ``gateway.core``; ``gateway.app`` → ``gateway.app``;
    ``retrain.cycle`` → ``retrain``."""
    pieces = module.split(".")
    return ".".join(pieces[:2]) if pieces[0] == "gateway" else pieces[0]


def _plain(text: str) -> str:
    """A docstring paragraph as Markdown: reST roles and double backquotes become code."""
    text = re.sub(r":(?:mod|class|func|data|meth|attr):`~?([^`]+)`", r"`\1`", text)
    return " ".join(text.replace("``", "`").split())


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return _plain(doc.split("\n\n")[0])


def _modules(folder: str) -> list[Path]:
    root = REPO / folder
    if folder == "gateway":  # the composition root: the modules directly in gateway/
        return sorted(p for p in root.glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    return sorted(p for p in root.rglob("*.py") if p.name not in {"__init__.py", "__main__.py"})


def modules_section() -> str:
    out: list[str] = []
    for folder, rule in PARTS:
        init = REPO / folder / "__init__.py"
        out.append(f"### `{folder}/` — {rule}\n")
        if init.exists() and folder != "gateway":
            out.append(summary(init) + "\n")
        for path in _modules(folder):
            name = path.relative_to(REPO / folder).as_posix()
            out.append(f"- `{name}` — {summary(path)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def layers_section() -> str:
    """How many modules of each part import each other part (what the layer tests allow)."""
    edges: Counter[tuple[str, str]] = Counter()
    for folder in ("gateway", "retrain", "flywheel_stack"):
        for module, imported in imports_of(folder).items():
            source = _shown(part(module))
            for target in {_shown(part(t)) for t in imported} - {source}:
                edges[(source, target)] += 1
    sources = sorted({a for a, _ in edges}, key=_order)
    targets = sorted({b for _, b in edges}, key=_order)
    head = "| imports → | " + " | ".join(f"`{t}`" for t in targets) + " |"
    rule = "| --- |" + " ---: |" * len(targets)
    rows = [
        f"| `{s}` | " + " | ".join(str(edges[(s, t)] or "") for t in targets) + " |"
        for s in sources
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def _shown(p: str) -> str:
    """The composition root's modules are one part in the table."""
    root = {
        "gateway.app",
        "gateway.archiver",
        "gateway.cli",
        "gateway.state",
        "gateway.openapi",
        "gateway.__main__",
    }
    return "gateway (root)" if p in root else p


def _order(p: str) -> int:
    names = [f.replace("/", ".") for f, _ in PARTS]
    names[names.index("gateway")] = "gateway (root)"
    return names.index(p) if p in names else len(names)


def render() -> str:
    page = TEMPLATE.read_text()
    return page.replace("{{modules}}", modules_section()).replace("{{layers}}", layers_section())


if __name__ == "__main__":
    print(render(), end="")
