"""The four top-level folders install as hyla.* subpackages, for normal (wheel) and editable installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"hyla": "hyla", "hyla.space": "space", "hyla.proxy_train": "proxy_train",
                "hyla.search": "search", "hyla.analysis": "analysis"}


def _on_disk_packages() -> set[str]:
    found = set()
    for name, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_pyproject_lists_every_subpackage() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == PACKAGE_DIRS
    assert set(cfg["packages"]) == _on_disk_packages()


def _venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh venv that installs hyla itself but sees this interpreter's packages (torch, fla ...).

    ``system_site_packages`` only reaches the *base* interpreter; when pytest runs inside a venv (CI, the README's
    commands) torch lives in that venv, so its site-packages are appended through a ``.pth`` file. Plain paths in a
    ``.pth`` are appended after the new venv's own site-packages, and the outer venv's own ``.pth`` files (its
    editable hyla) are not run, so hyla still comes from the new venv.
    """
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    inner = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (inner / "_outer_site.pth").write_text("".join(f"{p}\n" for p in outer))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env_dir, env


def _source_copy(tmp_path: Path) -> Path:
    """The project's sources in ``tmp_path`` (building a wheel in place would leave ``build/`` in the repo)."""
    skip = shutil.ignore_patterns(".git", ".ci-venv", "build", "dist", "*.egg-info", "hyla_runs", ".whl*", ".rayx",
                                  "__pycache__", ".pytest_cache", "results")
    return Path(shutil.copytree(ROOT, tmp_path / "src", ignore=skip))


def _imported_files(py: Path, cwd: Path, env: dict[str, str]) -> list[Path]:
    code = ("import json, hyla, hyla.space, hyla.proxy_train.model.mixers, hyla.search, hyla.analysis as a;"
            "print(json.dumps([m.__file__ for m in (hyla, hyla.space, hyla.proxy_train.model.mixers, hyla.search, a)]))")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=cwd, env=env)
    return [Path(p).resolve() for p in json.loads(out.stdout)]


def test_wheel_install_imports_every_subpackage(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(_source_copy(tmp_path))], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("hyla-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("hyla/cli.py", "hyla/space/layout.py", "hyla/proxy_train/model/mixers/__init__.py",
                     "hyla/search/__init__.py", "hyla/analysis/__init__.py",
                     "hyla/data/wikitext2_sample.txt", "hyla/data/README.md"):  # text source wikitext2-sample
        assert expected in names
    env_dir, env = _venv(tmp_path)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=tmp_path)
    for path in _imported_files(py, tmp_path, env):
        assert env_dir.resolve() in path.parents, path
    helped = subprocess.run([str(env_dir / "bin" / "hyla"), "--help"], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert helped.returncode == 0
    for sub in ("space", "proxy", "search", "analysis", "train"):
        assert sub in helped.stdout


def test_editable_install_maps_folders(tmp_path: Path) -> None:
    env_dir, env = _venv(tmp_path)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-build-isolation", "-e", str(ROOT)], check=True, cwd=tmp_path)
    files = _imported_files(py, tmp_path, env)
    expected = [ROOT / "hyla", ROOT / "space", ROOT / "proxy_train" / "model" / "mixers", ROOT / "search", ROOT / "analysis"]
    assert [f.parent for f in files] == [e.resolve() for e in expected]
