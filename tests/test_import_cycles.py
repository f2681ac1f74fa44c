"""No import cycle inside reference/, kernels/ and ddpm/, and the layering of DESIGN.md.

Imports are read from the source (ast), never executed, so a cycle is found whatever order the
modules happen to be imported in. An import inside a function counts like one at module level:
deferring an import only moves a cycle's failure to run time and hides the tangle (each of the
two cycles this test was written against, ddpm/cli.py <-> ddpm/demo.py and ddpm/unet.py <->
ddpm/diffusers_io.py, had one side inside a function). Imports under `if TYPE_CHECKING:` never
run and are skipped. `import a.b` and `from a import b` (b a module) are edges to the module
a.b itself, not to the packages above it: every module's package __init__ runs first anyway,
and counting that would make every package that re-exports its modules a cycle.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reference", "kernels", "ddpm")


@dataclass(frozen=True)
class Import:
    """One import statement's edge: the module it loads, where, and whether it runs only when a
    function is called (deferred) or when the module is imported."""

    target: str
    line: int
    deferred: bool


def module_files(root: Path, packages) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root/<package> (a package's
    __init__.py is the package's own name)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base):
        raise ValueError(f"{module}: relative import beyond the top-level package (level {level})")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def read_imports(path: Path, module: str) -> list[Import]:
    """Every import in `path` as absolute names (relative ones resolved): `import a.b` -> a.b,
    `from a import b` -> a.b, which names module a.b when there is one and a name of a if not
    (`import_graph` maps it to the longest prefix that is a module)."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the else branch runs
                visit(child, deferred)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, deferred) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            found.extend(Import(base if alias.name == "*" else f"{base}.{alias.name}", node.lineno, deferred)
                         for alias in node.names)
        inside = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def _known(name: str, modules) -> str | None:
    """`name` itself when it is one of `modules`, else its longest prefix that is, else None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path, packages) -> dict[str, dict[str, Import]]:
    """module -> {imported module of `packages`: the first import of it (a module-level one if
    any)}. `from a import b, c` where b is a module and c a name of a gives edges a.b and a."""
    modules = module_files(root, packages)
    graph: dict[str, dict[str, Import]] = {}
    for module, path in modules.items():
        edges: dict[str, Import] = {}
        for imp in read_imports(path, module):
            target = _known(imp.target, modules)
            if target is None or target == module:
                continue
            if target not in edges or (edges[target].deferred and not imp.deferred):
                edges[target] = Import(target, imp.line, imp.deferred)
        graph[module] = edges
    return graph


def _strongly_connected(graph) -> list[list[str]]:
    """Tarjan's components, each sorted (iterative: no recursion limit on deep chains)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def find_cycles(graph) -> list[list[str]]:
    """One shortest cycle [a, b, ..., a] per group of mutually importing modules."""
    cycles = []
    for component in _strongly_connected(graph):
        start, members = component[0], set(component)
        if len(component) == 1 and start not in graph.get(start, {}):
            continue
        parent = {start: None}
        queue, closing = deque([start]), None
        while queue and closing is None:  # BFS inside the component back to `start`
            node = queue.popleft()
            for child in sorted(graph[node]):
                if child == start:
                    closing = node
                    break
                if child in members and child not in parent:
                    parent[child] = node
                    queue.append(child)
        chain = []  # closing, its parent, ..., start
        while closing is not None:
            chain.append(closing)
            closing = parent[closing]
        cycles.append(chain[::-1] + [start])
    return cycles


def describe(cycle: list[str], graph) -> str:
    """'a -> b (a.py line 3) -> a (b.py line 9, inside a function)'."""
    out = [cycle[0]]
    for a, b in zip(cycle, cycle[1:]):
        edge = graph[a][b]
        where = f"{a.replace('.', '/')}.py line {edge.line}" + (", inside a function" if edge.deferred else "")
        out.append(f"{b} ({where})")
    return " -> ".join(out)


# ----------------------------------------------------------------------------- the tree

@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, PACKAGES)


def test_every_package_is_read(graph):
    for package in PACKAGES:
        assert package in graph and sum(m.startswith(package + ".") for m in graph) >= 3, package
    assert "ddpm.cli" in graph["ddpm.__main__"]


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, graph) for c in cycles)


def _imports_of(root: Path, package: str) -> list[tuple[str, Import]]:
    """Every (module, import) of `package`, with targets outside the three packages kept."""
    modules = module_files(root, [package])
    return [(module, imp) for module, path in modules.items() for imp in read_imports(path, module)]


# DESIGN.md: "`reference` <- `kernels` (tests only) ; `reference` <- `ddpm` -> `kernels`.
# `reference/` imports nothing of the others. No module imports `tests` or `benchmarks`."
FORBIDDEN = {
    "reference": ("kernels", "ddpm", "tests", "benchmarks"),
    "kernels": ("reference", "ddpm", "tests", "benchmarks"),
    "ddpm": ("tests", "benchmarks"),
}


@pytest.mark.parametrize("package", PACKAGES)
def test_layering_of_the_design(package):
    wrong = [f"{module} imports {imp.target} (line {imp.line})" for module, imp in _imports_of(ROOT, package)
             if imp.target.split(".")[0] in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------------- the finder itself

def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_finds_the_cli_demo_cycle_through_a_function_level_import(tmp_path):
    # ddpm/cli.py <-> ddpm/demo.py as they were: the CLI imported the demo inside cmd_demo, the
    # demo imported `draw` from the CLI at module level
    root = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/cli.py": """
            def draw(): ...
            def cmd_demo(args):
                from .demo import run_demo
                return run_demo()
        """,
        "pkg/demo.py": "from .cli import draw\n\ndef run_demo(): return draw()\n",
    })
    graph = import_graph(root, ["pkg"])
    assert find_cycles(graph) == [["pkg.cli", "pkg.demo", "pkg.cli"]]
    assert describe(find_cycles(graph)[0], graph) == (
        "pkg.cli -> pkg.demo (pkg/cli.py line 4, inside a function) -> pkg.cli (pkg/demo.py line 1)")


def test_finds_the_unet_diffusers_io_cycle_through_from_package_import_module(tmp_path):
    # ddpm/unet.py <-> ddpm/diffusers_io.py, spelled with `from . import module` and an absolute
    # import, inside a class method
    root = write_package(tmp_path, {
        "pkg/__init__.py": "from .unet import UNet\n",
        "pkg/unet.py": """
            import numpy as np

            class UNet:
                @classmethod
                def from_diffusers(cls, state):
                    from . import diffusers_io
                    return diffusers_io.load(state)
        """,
        "pkg/diffusers_io.py": "import pkg.unet\n\ndef load(state): return pkg.unet.UNet()\n",
    })
    graph = import_graph(root, ["pkg"])
    assert graph["pkg.unet"]["pkg.diffusers_io"].deferred
    assert "numpy" not in graph["pkg.unet"]  # outside imports are not edges
    assert find_cycles(graph) == [["pkg.diffusers_io", "pkg.unet", "pkg.diffusers_io"]]


def test_a_longer_cycle_is_reported_whole_and_acyclic_packages_pass(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",           # re-exports: not a cycle
        "pkg/a.py": "from .sub.b import g\n\ndef f(): ...\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from ..c import h\n\ndef g(): ...\n",
        "pkg/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import f\n\ndef h(): ...\n",
    })
    assert find_cycles(import_graph(root, ["pkg"])) == []
    (root / "pkg/c.py").write_text("from pkg import a\n\ndef h(): ...\n")  # a submodule, by name
    graph = import_graph(root, ["pkg"])
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_importing_a_name_of_the_own_package_is_an_edge_to_its_init(tmp_path):
    root = write_package(tmp_path, {
        "pkg/__init__.py": "from .a import f\nVERSION = 1\n",
        "pkg/a.py": "from . import VERSION\n\ndef f(): ...\n",
    })
    assert find_cycles(import_graph(root, ["pkg"])) == [["pkg", "pkg.a", "pkg"]]
