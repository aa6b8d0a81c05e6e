"""The architecture's import contracts (.importlinter) hold: `lint-imports` passes.

import-linter reads every import statement, inside functions too, and follows
chains through our own modules; tests/unit/test_purity.py keeps the checks it
cannot make (what importing a module pulls in at run time, clock and env reads).
"""

import configparser
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
CONTRACTS = REPO / ".importlinter"
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def lint_imports(*args):
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip


def contract_names(path=CONTRACTS):
    parser = configparser.ConfigParser()
    parser.read(path, encoding="utf-8")
    return [s.split(":", 2)[2] for s in parser.sections() if s.startswith("importlinter:contract:")]


def test_the_contracts_hold():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in result.stdout


def test_there_are_contracts_for_the_core_models_and_the_decision_path():
    names = contract_names()
    assert len(names) >= 3
    for expected in ("core-no-framework", "models-no-shell", "decision-path-light", "layers", "acyclic"):
        assert expected in names


def test_a_broken_contract_fails_the_check(tmp_path):
    """The check can fail: a contract that today's code breaks makes lint-imports exit non-zero."""
    text = CONTRACTS.read_text(encoding="utf-8")
    config = tmp_path / "contracts.ini"
    config.write_text(
        text + "\n[importlinter:contract:canary]\nname = canary\ntype = forbidden\n"
        "source_modules =\n    prism.director.core\nforbidden_modules =\n    prism.flows.identity\n",
        encoding="utf-8",
    )
    result = lint_imports(str(config))
    assert result.returncode != 0
    assert "prism.director.core is not allowed to import prism.flows.identity" in result.stdout
