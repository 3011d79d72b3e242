"""Open JupyterLab on notebooks/ with the project's kernel (what `make lab` runs).

    python scripts/lab.py [--port 8888] [--token TOKEN] [--root-dir notebooks] [--kernel NAME] [--browser]
                          [-- any other `jupyter lab` option]

It binds to 127.0.0.1 only, prints the URL with its token, and then replaces itself with
``python -m jupyter lab`` (same interpreter, so the JupyterLab, widgets extension and kernel of this venv).
The default kernel is ``lavise-nb`` (the venv's kernelspec that ``make setup`` installs) when it points
at this interpreter, else ``python3`` (this venv's own, installed with ``--sys-prefix``). ``--allow-root``
is passed only when running as root. tests/test_browser.py starts JupyterLab through this script.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "lavise-nb"
FALLBACK_KERNEL = "python3"


def _same_python(command: str) -> bool:
    # venv interpreters are symlinks to one base python: compare the paths, not what they resolve to
    return os.path.normpath(os.path.abspath(command)) == os.path.normpath(os.path.abspath(sys.executable))


def default_kernel() -> tuple[str, str]:
    """The kernel to select by default, and why."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return FALLBACK_KERNEL, f"no {KERNEL!r} kernelspec (make setup installs it); using this venv's {FALLBACK_KERNEL!r}"
    if spec.argv and _same_python(spec.argv[0]):
        return KERNEL, f"{spec.display_name} ({spec.argv[0]})"
    return FALLBACK_KERNEL, (f"the {KERNEL!r} kernelspec runs {spec.argv[0] if spec.argv else '?'}, not {sys.executable} "
                             f"(`make setup` installs it in the venv); using this venv's {FALLBACK_KERNEL!r}")


def command(args: argparse.Namespace, extra: list[str], kernel: str) -> list[str]:
    """The `python -m jupyter lab` command line."""
    argv = [sys.executable, "-m", "jupyter", "lab",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={args.port}",
            "--ServerApp.port_retries=0",  # the printed URL is the one served, or it fails saying the port is taken
            f"--ServerApp.root_dir={Path(args.root_dir).resolve()}",
            f"--IdentityProvider.token={args.token}",
            f"--MappingKernelManager.default_kernel_name={kernel}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",  # offline: no update look-ups
            ]
    argv.append("--no-browser" if args.no_browser else "--ServerApp.open_browser=True")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    return argv + extra


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("LAB_PORT", 8888)),
                        help="port on 127.0.0.1 (default 8888, or $LAB_PORT)")
    parser.add_argument("--token", default=os.environ.get("LAB_TOKEN") or None,
                        help="access token (default: a fresh random one, or $LAB_TOKEN)")
    parser.add_argument("--root-dir", default=str(ROOT / "notebooks"), help="folder served (default notebooks/)")
    parser.add_argument("--kernel", default=None,
                        help=f"default kernel (default {KERNEL!r} when it runs this python, else {FALLBACK_KERNEL!r})")
    parser.add_argument("--no-browser", dest="no_browser", action="store_true", default=True,
                        help="do not open a browser (the default)")
    parser.add_argument("--browser", dest="no_browser", action="store_false", help="open the system's browser")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    args.token = args.token or secrets.token_hex(24)
    return args, extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse(argv)
    if not Path(args.root_dir).is_dir():
        sys.exit(f"lab.py: --root-dir {args.root_dir} is not a folder")
    if args.kernel:
        kernel, why = args.kernel, "--kernel"
    else:
        kernel, why = default_kernel()
    cmd = command(args, extra, kernel)
    print(f"JupyterLab on {Path(args.root_dir).resolve()}, default kernel {kernel!r}: {why}", flush=True)
    print(f"    http://127.0.0.1:{args.port}/lab?token={args.token}", flush=True)
    # `jupyter lab` runs the first `jupyter-lab` on PATH: make it this interpreter's (as an activated venv would)
    env = dict(os.environ, PATH=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", os.defpath)]))
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
