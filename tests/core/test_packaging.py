"""Build the wheel, install it in a fresh virtual environment, import every module from it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _expected_modules() -> list[str]:
    """Every .py module under the folders that pyproject.toml maps into fedsilo."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mods = []
    for package in cfg["packages"]:
        folder = ROOT / cfg["package-dir"][package]
        for py in sorted(folder.glob("*.py")):
            mods.append(package if py.stem == "__init__" else f"{package}.{py.stem}")
    return mods


def test_every_source_folder_is_listed_as_a_package() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {Path(cfg["package-dir"][p]).as_posix() for p in cfg["packages"]}
    for top in ("fedsilo", "server", "client", "strategies", "privacy", "lineage", "simulations"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix()
            assert rel in mapped, f"{rel}/ is a package but pyproject.toml does not list it"


@pytest.mark.slow
def test_wheel_installs_and_imports_every_module(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, timeout=300,
    )
    wheels = list(dist.glob("fedsilo-*.whl"))
    assert len(wheels) == 1
    # Without PYTHONPATH (Ray sets it in this process once a simulation has run): pip
    # would find this checkout's editable fedsilo on it and skip installing the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Dependencies come from this environment's site-packages (a path entry, so its
    # .pth files, including the editable fedsilo finder, are not processed).
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheels[0])],
                   check=True, timeout=300, env=env)
    modules = _expected_modules()
    script = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(env_dir)!r}), (m, mod.__file__)\n"
        "print(len(mods))\n"
    )
    res = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout.strip()) == len(modules) > 30
