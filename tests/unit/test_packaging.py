"""A non-editable install works: the wheel ships the model and the example
configuration, and `prism evaluate` runs from a fresh venv with the installed model.

The wheel is built from a copy of the sources (building in the checkout would leave
build/ behind). The fresh venv gets PRISM from the wheel only (`--no-deps
--no-index`); its dependencies come from this venv's site-packages through a plain
path in a .pth file, which does not run this venv's own .pth files, so the
editable install of the checkout stays out of it (the test checks where `prism`,
`models` and the model are imported from).
"""

import glob
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "README.md", "prism", "models", "ryu_apps", "mininet_topos", "examples")
MODEL_FILES = ("models/default/model.skops", "models/default/manifest.json",
               "models/first_packet/model.skops", "models/first_packet/manifest.json")
EXAMPLE_CONFIG = "share/prism/examples/prism.yaml"
SITE_PACKAGES = pathlib.Path("lib") / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project's wheel, built without network from a copy of the sources."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([*PIP, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(work / "dist"), str(source)])
    (built,) = (work / "dist").glob("prism-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed non-editable; returns the venv's path."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = venv / SITE_PACKAGES
    assert site.is_dir()
    (site / "prism_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    run([*PIP, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel)])
    return venv


def test_wheel_ships_the_model_and_the_example_configuration(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for path in MODEL_FILES:
        assert path in names
    assert f"prism-0.1.0.data/data/{EXAMPLE_CONFIG}" in names
    assert {"prism/cli.py", "models/predictor.py", "ryu_apps/mirroring_director.py",
            "mininet_topos/prism_topo.py"} <= names  # fmt: skip
    assert not any(name.startswith("tests/") for name in names)


def test_fresh_install_imports_prism_and_its_model_from_the_venv(installed):
    site = (installed / SITE_PACKAGES).resolve()
    code = (
        "import prism, models.predictor, mininet_topos.prism_topo as t; "
        "print(prism.__file__); print(models.predictor.__file__); print(t.DEFAULT_MODEL_DIR.resolve())"
    )
    lines = run([str(installed / "bin" / "python"), "-c", code], cwd=installed).stdout.split()
    assert lines == [str(site / "prism" / "__init__.py"), str(site / "models" / "predictor.py"),
                     str(site / "models" / "first_packet")]  # fmt: skip


def test_fresh_install_checks_its_example_configuration(installed):
    result = run([str(installed / "bin" / "prism"), "check-config", str(installed / EXAMPLE_CONFIG)], cwd=installed)
    assert result.stdout.startswith("OK: ")


def test_fresh_install_evaluates_flows_with_its_installed_model(installed):
    flows = sorted(glob.glob(str(REPO / "data" / "flows" / "*.parquet")))
    assert flows
    model = installed / SITE_PACKAGES / "models" / "first_packet"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run([str(installed / "bin" / "prism"), "evaluate", *flows, "--model", str(model)], cwd=installed, env=env)
    assert "baseline (port mean)" in result.stdout  # the installed first-packet model's rows
    assert "controller vs fixed rf1" in result.stdout  # the installed example configuration's policy
    assert "flows from" in result.stdout
