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


def test_public_surface_is_listed():
    import lavise_nb
    assert all(hasattr(lavise_nb, name) for name in lavise_nb.__all__)
    assert "FilterExplainer" in lavise_nb.__all__ and "ActivationStore" in lavise_nb.__all__
