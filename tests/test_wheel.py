"""The wheel ships the StampScenes tables, and an install of it reads them without the source checkout."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lavise_nb import scenes

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("lavise_nb/data/stamps.csv", "lavise_nb/data/backgrounds.csv")
READ_TABLES = """
import json, sys
sys.path.insert(0, sys.argv[1])
from lavise_nb import scenes
print(json.dumps({"file": scenes.__file__, "stamps": len(scenes.stamp_table()),
                  "backgrounds": len(scenes.background_table()),
                  "usable": len(scenes.usable_rows(scenes.stamp_table(), photos_only=True))}))
"""


def _run(args, cwd, timeout=120):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_wheel_ships_the_tables_and_an_install_reads_them(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"          # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lavise_nb", source / "lavise_nb", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          ".", "-w", str(wheels)], cwd=source)
    [wheel] = wheels.glob("lavise_nb-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert set(TABLES) <= set(archive.namelist())
        assert archive.read(TABLES[0]) == (ROOT / TABLES[0]).read_bytes()

    target = tmp_path / "installed"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
          str(wheel)], cwd=tmp_path)
    # -I: no PYTHONPATH, no user site, not the working directory; only the install is added to sys.path
    out = json.loads(_run([sys.executable, "-I", "-c", READ_TABLES, str(target)], cwd=tmp_path).splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(target.resolve())
    assert out["stamps"] == len(scenes.stamp_table()) and out["backgrounds"] == len(scenes.background_table())
    assert out["usable"] == len(scenes.usable_rows(scenes.stamp_table(), photos_only=True)) > 100
