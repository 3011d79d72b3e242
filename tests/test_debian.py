"""Tests for lavise_nb._utils.debian.fetch_deb with apt-get and dpkg-deb faked."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lavise_nb._utils import debian


@pytest.fixture
def fake_apt(monkeypatch):
    """apt-get download that finds nothing until apt-get update has run; dpkg-deb -x writes one file."""
    calls = []

    def run(cmd, cwd=None, **_):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"] and ["apt-get", "update"] in calls:
            for package in cmd[2:]:
                (Path(cwd) / f"{package}_1.0_all.deb").write_text(package)
        if cmd[0] == "dpkg-deb":
            out = Path(cmd[3]) / "usr" / "share" / Path(cmd[2]).read_text()
            out.mkdir(parents=True)
            (out / "data").write_text("x")
        return subprocess.CompletedProcess(cmd, 0, "", "E: Unable to locate package")

    monkeypatch.setattr(debian.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(debian.subprocess, "run", run)
    return calls


def test_fetch_deb_updates_once_then_unpacks(tmp_path, fake_apt):
    dest = debian.fetch_deb(["pkg-a", "pkg-b"], tmp_path / "out", needs=["usr/share/pkg-b/data"])
    assert dest == tmp_path / "out" and (dest / "usr/share/pkg-a/data").exists()
    assert fake_apt == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"],
                        ["dpkg-deb", "-x"], ["dpkg-deb", "-x"]]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_fetch_deb_names_the_package_and_the_fix(tmp_path, fake_apt, monkeypatch):
    with pytest.raises(RuntimeError, match=r"pkg-a did not contain usr/share/other\. Do it by hand\.$"):
        debian.fetch_deb("pkg-a", tmp_path / "out", needs=["usr/share/other"], fix="Do it by hand.")
    monkeypatch.setattr(debian.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 100, "", "E: no"))
    with pytest.raises(RuntimeError, match=r"'apt-get download pkg-a' failed.*: E: no\. Do it by hand\.$"):
        debian.fetch_deb("pkg-a", tmp_path / "out", fix="Do it by hand.")
    monkeypatch.setattr(debian.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match=r"apt-get and dpkg-deb not found: WordNet needs the Debian package pkg-a"):
        debian.fetch_deb("pkg-a", tmp_path / "out", purpose="WordNet")
    assert not (tmp_path / "out").exists()
