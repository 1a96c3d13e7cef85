"""The package layout holds: public callbacks at the top, pure math in functional/, plumbing in utils/.

Walks the static imports of every module under callbacks/ (transitively, within the package).
"""
import ast
import re
import textwrap
import importlib
import inspect
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

import callbacks

ROOT = Path(callbacks.__path__[0])  # the callbacks/ folder (the package is lit_grok.callbacks, also named callbacks)
RECORDER = "callbacks.update_recorder"


def short(module: str) -> str:
    """A module's name under the short package name: lit_grok.callbacks.x -> callbacks.x."""
    return module.removeprefix("lit_grok.")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TOP = sorted(m for m, p in MODULES.items() if p.parent == ROOT and p.name != "__init__.py")  # the public callbacks
FUNCTIONAL = sorted(m for m in MODULES if m.startswith("callbacks.functional."))


def direct_imports(name: str) -> set[str]:
    """Modules ``name`` imports (absolute names; ``from pkg import mod`` counts as pkg.mod when mod is a module)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package  # relative imports
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return out


def closure(name: str) -> set[str]:
    """Every module reached from ``name`` through imports inside the package (not ``name`` itself), plus the
    outside modules any of them imports."""
    seen, todo = set(), [name]
    while todo:
        for dep in direct_imports(todo.pop()):
            if dep not in seen and dep != name:
                seen.add(dep)
                if dep in MODULES and dep != "callbacks":
                    todo.append(dep)
    return seen


def test_top_level_holds_only_public_callbacks_named_after_their_class():
    for name in TOP:
        module = importlib.import_module(name)
        classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
                   if short(c.__module__) == name and issubclass(c, Callback) and not inspect.isabstract(c)]
        assert len(classes) == 1, f"{name} defines {classes}: one public callback per file"
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", classes[0].__name__).lower()
        assert name.rsplit(".", 1)[1] == snake, f"{name} holds {classes[0].__name__}: name the file {snake}.py"
        assert getattr(callbacks, classes[0].__name__) is classes[0], f"{classes[0].__name__} is not exported"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "callbacks"))
def test_no_callback_module_imports_another_but_the_recorder(name):
    others = {m for m in TOP if m not in (name, RECORDER)}
    reached = closure(name) & others
    assert not reached, f"{name} imports the callback module(s) {sorted(reached)} (directly or through utils)"


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_is_pure(name):
    reached = closure(name)
    assert not {m for m in reached if m.split(".")[0] == "lightning"}, f"{name} imports Lightning"
    assert not {m for m in reached if m in TOP}, f"{name} imports a callback"


def test_extension_points_are_exported():
    for name in ("RowAnalysis", "ScheduledCallback", "RunSchedule", "CausalTestCallback", "EvaluableModule",
                 "ProbeableModule", "ProbeTarget", "GrokStepSource", "DirectionSource", "ConfigurationError",
                 "LitGrokError", "NonFiniteError", "DirectionUnavailable"):
        assert name in callbacks.__all__ and hasattr(callbacks, name)


def test_sections_cited_are_those_of_docs_methods():
    """Every "§" under callbacks/, lit_grok/, benchmarks/ and tests/ cites docs/methods.md, and the section exists."""
    repo = ROOT.parent
    methods = (repo / "docs" / "methods.md").read_text()
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", methods, flags=re.M))
    code = [*ROOT.rglob("*.py"), *(repo / "lit_grok").rglob("*.py"), *(repo / "benchmarks").rglob("*.py")]
    for path in [*code, *(p for p in (repo / "tests").glob("*.py") if p.name != "test_layout.py")]:
        text = path.read_text()
        for cite in re.finditer(r"docs/methods\.md (§[\d.]+(?:(?:, | and |-)§[\d.]+)*)", text):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", cite.group(1)):
                assert number in sections, f"{path} cites docs/methods.md §{number}, which does not exist"
        rest = re.sub(r"docs/methods\.md §[\d.]+(?:(?:, | and |-)§[\d.]+)*", "", text)
        rest = rest.replace('"§"', "")
        assert "§" not in rest, f"{path} cites a section outside docs/methods.md"


PUBLIC = sorted(name for name in callbacks.__all__
                if inspect.isclass(getattr(callbacks, name)) and issubclass(getattr(callbacks, name), Callback)
                and short(getattr(callbacks, name).__module__) in TOP)


def example_of(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    assert "Example::" in doc, f"{cls.__name__}'s docstring has no Example::"
    block = doc.split("Example::", 1)[1]
    lines = []
    for line in block.split("\n")[1:]:
        if line.strip() and not line.startswith("    "):
            break  # the indented block ends
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_callback_has_a_runnable_example(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a Trainer may create folders where it runs
    namespace: dict = {}
    exec(compile(example_of(getattr(callbacks, name)), f"<{name} example>", "exec"), namespace)
    trainers = [v for v in namespace.values() if isinstance(v, Trainer)]
    assert any(isinstance(cb, getattr(callbacks, name)) for t in trainers for cb in t.callbacks), \
        f"{name}'s example builds no Trainer holding one"
