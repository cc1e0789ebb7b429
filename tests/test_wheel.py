"""The wheel without the Makefile: built from the checkout's package files, it holds the package, its
recipes and py.typed (no tests, no benchmarks), and installs into a clean venv (torch first, then the wheel
with its declared dependencies, no auto_LiRPA) whose ``maar`` runs the commands that need no auto_LiRPA;
the one-line advice of a command that needs it installs an auto_LiRPA that works."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, write_verify_folder
from maar_plugin import __version__
from maar_plugin.bounds.lirpa_compat import INSTALL_ADVICE
from maar_plugin.verification import InstanceResult

BUILD_INPUTS = ("maar_plugin", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
PIP_ADVICE = INSTALL_ADVICE.split(" (")[0]  # the advice's pip commands


def _run(command: list[str], cwd: Path, timeout: float, check: bool = True,
         venv: Path | None = None) -> subprocess.CompletedProcess:
    """``command`` with no PYTHONPATH, so that nothing of the checkout is imported by accident (``venv``:
    its bin/ first on PATH)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 or not check, \
        f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the files it is built from (the build writes into its source tree)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)], tmp_path, 600)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_into_a_clean_venv_and_its_commands_run(tmp_path):
    pytest.importorskip("build")
    wheel = _build_wheel(tmp_path)
    assert wheel.name == f"maar_plugin-{__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "maar_plugin").rglob("*.py")}
    recipes = {path.relative_to(REPO).as_posix() for path in (REPO / "maar_plugin" / "recipes").glob("*.yaml")}
    assert recipes and modules | recipes | {"maar_plugin/py.typed"} <= names
    assert any(name.startswith("maar_plugin-") and name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/")) or "__pycache__" in name]

    venv = tmp_path / "venv"
    try:
        _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 300)
        pip, python, maar = (str(venv / "bin" / name) for name in ("pip", "python", "maar"))
        _run([pip, "install", "-q", "torch"], tmp_path, 1800)
        _run([pip, "install", "-q", str(wheel)], tmp_path, 1800)
        _run([pip, "check"], tmp_path, 300)
        lirpa = subprocess.run([python, "-c", "import auto_LiRPA"], cwd=tmp_path, capture_output=True)
        assert lirpa.returncode != 0  # the clean install has no auto_LiRPA
        version = _run([python, "-c", "import importlib.metadata, maar_plugin; "
                        "print(maar_plugin.__version__, importlib.metadata.version('maar-plugin'))"], tmp_path, 300)
        assert version.stdout.split() == [__version__, __version__]

        assert "Usage: maar" in _run([maar, "--help"], tmp_path, 300).stdout
        assert "maar-ibp" in _run([maar, "objectives"], tmp_path, 300).stdout
        assert "dm-small" in _run([maar, "models"], tmp_path, 300).stdout
        assert "mnist-eps0.1-dm-small" in _run([maar, "recipes"], tmp_path, 300).stdout
        folder = write_verify_folder(tmp_path / "verified", [
            InstanceResult("img0", "net.onnx", "img0.vnnlib", "unsat", stage="IBP", seconds=0.1),
            InstanceResult("img1", "net.onnx", "img1.vnnlib", "timeout", seconds=5.0)])
        report = _run([maar, "report", str(folder)], tmp_path, 300).stdout
        assert "unsat: 1" in report and "timeout: 1" in report
        assert (folder / "report" / "cactus.png").is_file()

        verify = [maar, "verify", "--onnx", str(REPO / "models" / "mnist-dm-small-maar-eps0.1.onnx"), "--vnnlib",
                  str(REPO / "vnnlib_specs" / "mnist-dm-small-maar-eps0.1" / "img00000_eps0.1.vnnlib"),
                  "--no-progress"]
        refused = _run([*verify, "--out", str(tmp_path / "refused")], tmp_path, 300, check=False)
        assert refused.returncode == 1
        assert refused.stderr.strip() == f"Error: this needs auto_LiRPA, which is not installed: {INSTALL_ADVICE}"
        _run(["bash", "-c", PIP_ADVICE], tmp_path, 1800, venv=venv)
        assert "unsat" in _run([*verify, "--out", str(tmp_path / "verified-after")], tmp_path, 600).stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # torch's wheels take gigabytes
