"""The package's shape: small modules, few parameters, public names wherever modules meet."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lavise_nb"
MAX_LINES = 700
MAX_PARAMETERS = 10


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _imported_private_names(tree: ast.AST) -> list[str]:
    """``from <lavise_nb module> import _name`` (absolute or relative), and ``module._name`` of torchvision."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            ours = node.level > 0 or (node.module or "").split(".")[0] in ("lavise_nb", "torchvision")
            found += [f"{node.module}.{a.name}" for a in node.names
                      if ours and a.name.startswith("_") and not a.name.startswith("__")]
            private_module = [p for p in (node.module or "").split(".") if p.startswith("_") and p != "_utils"]
            if ours and private_module:
                found.append(f"{node.module} (a private module)")
    return found


def _wide_functions(tree: ast.AST) -> list[str]:
    wide = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                not node.name.startswith("_") or node.name == "__init__"):
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
            n -= 1 if a.args and a.args[0].arg in ("self", "cls") else 0
            if n > MAX_PARAMETERS:
                wide.append(f"{node.name} (line {node.lineno}) takes {n}")
    return wide


def _private_attributes_of_other_objects(tree: ast.AST) -> list[str]:
    """``other._name`` reads or writes where ``other`` is not self/cls (a module reaching into another's state)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id not in ("self", "cls", "super"):
                found.append(f"{owner.id}.{node.attr} (line {node.lineno})")
    return found


def test_the_checks_catch_what_they_look_for():
    bad = ast.parse("from .store import _masks\nfrom lavise_nb.mapper import _crop as c\n"
                    "from torchvision.models._meta import X\ndef f(a, b, c, d, e, f, g, h, i, j, k): pass\n"
                    "x = store._masks\n")
    assert len(_imported_private_names(bad)) == 3
    assert _wide_functions(bad) == ["f (line 4) takes 11"]
    assert _private_attributes_of_other_objects(bad) == ["store._masks (line 5)"]
    good = ast.parse("from ._utils.cache import cache_dir\nclass A:\n    def __init__(self, a, *, b=1): self._x = a\n")
    assert not _imported_private_names(good) and not _wide_functions(good)
    assert not _private_attributes_of_other_objects(good)


def test_no_module_imports_another_modules_private_names():
    problems = {str(p.relative_to(PACKAGE)): _imported_private_names(ast.parse(p.read_text())) for p in _modules()}
    assert not {k: v for k, v in problems.items() if v}


def test_no_module_reaches_into_another_objects_private_state():
    problems = {str(p.relative_to(PACKAGE)): _private_attributes_of_other_objects(ast.parse(p.read_text()))
                for p in _modules()}
    assert not {k: v for k, v in problems.items() if v}


def test_public_functions_take_at_most_ten_parameters():
    problems = {str(p.relative_to(PACKAGE)): _wide_functions(ast.parse(p.read_text())) for p in _modules()}
    assert not {k: v for k, v in problems.items() if v}


def test_modules_are_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert not {k: v for k, v in sizes.items() if v > MAX_LINES}
