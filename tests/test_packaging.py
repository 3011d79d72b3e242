import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            names |= {_name(r) for r in entry["pip"] if not r.startswith("-e")}
        else:
            names.add(CONDA_TO_PYPI.get(_name(entry), _name(entry)))
    names -= {"python", "pip"}
    assert names == wanted, (sorted(names - wanted), sorted(wanted - names))
    assert "-e ." in next(e for e in env["dependencies"] if isinstance(e, dict))["pip"]


def test_public_surface_is_listed_and_documented():
    import importlib
    import pkgutil

    import lavise_nb
    exported: dict = {}
    exec("from lavise_nb import *", exported)
    assert sorted(set(exported) - {"__builtins__"}) == sorted(lavise_nb.__all__)
    assert len(set(lavise_nb.__all__)) == len(lavise_nb.__all__)
    undocumented, unlisted = [], []
    for info in pkgutil.walk_packages(lavise_nb.__path__, "lavise_nb."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            unlisted.append(info.name)
            continue
        for name in module.__all__:
            value = getattr(module, name)  # a listed name that is not defined fails here
            if callable(value) and not (value.__doc__ or "").strip():
                undocumented.append(f"{info.name}.{name}")
    assert not unlisted and not undocumented, (unlisted, undocumented)
