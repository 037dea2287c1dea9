"""The package's layers: each heavy library behind one module, the pure core free of them."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PKG = REPO / "dap_hvd"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _importers(prefix: str) -> set[str]:
    return {str(p.relative_to(REPO)) for p in PKG.rglob("*.py")
            if any(m == prefix or m.startswith(prefix + ".") for m in _imports(p))}


def test_each_heavy_library_has_one_wrapper():
    assert _importers("horovod") == {"dap_hvd/dist.py"}
    assert _importers("nvidia.dali") == {"dap_hvd/data/dali.py"}
    assert _importers("prometheus_client") == {"dap_hvd/metrics.py"}
    assert _importers("pydantic") == {"dap_hvd/config.py"}


def test_the_policy_core_imports_neither_torch_nor_the_data_layer():
    for path in (PKG / "policy").glob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("torch", "horovod", "nvidia")
               or m.startswith("dap_hvd.data") or m in ("dap_hvd.dist", "dap_hvd.train", "dap_hvd.engine")}
        assert not bad, f"{path.name} imports {bad}"


def test_the_loader_modules_do_not_import_each_other_or_the_holder():
    """spec.py is the contract; loaders.py picks an implementation; no import circle."""
    for name in ("dali.py", "torch_loader.py"):
        mods = _imports(PKG / "data" / name)
        assert "dap_hvd.data.loaders" not in mods and "dap_hvd.data.spec" in mods
    assert not {m for m in _imports(PKG / "data" / "spec.py") if m.startswith("dap_hvd.data")}


def test_the_policies_and_the_rng_streams_import_no_torch():
    """policy/ and rng.py are pure numpy: `dap-hvd plan` and the selection tests load neither torch nor a loader."""
    for path in [*(PKG / "policy").glob("*.py"), PKG / "rng.py"]:
        heavy = {m for m in _imports(path) if m.split(".")[0] in ("torch", "torchvision", "nvidia", "horovod")}
        assert not heavy, f"{path.name} imports {heavy}"


def test_the_selection_rules_load_without_torch():
    """selection.py is where a policy meets Horovod, but its rules (the count check, the broadcast
    header) are pure: importing it loads neither torch nor Horovod, only the collectives do."""
    code = "import sys, dap_hvd.selection; print(sorted(m for m in ('torch', 'horovod') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_service_does_not_import_its_benchmarks():
    """bench/ is a suite beside the service: only the CLI's `bench` command reaches into it."""
    users = {p for p in _importers("dap_hvd.bench") if not p.startswith("dap_hvd/bench/")}
    assert users == {"dap_hvd/cli.py"}


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in [*PKG.rglob("*.py"), *REPO.glob("tests/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dap_hvd"):
                crossing += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, crossing


def test_no_function_of_the_package_is_longer_than_a_screen():
    """60 lines: a function that reads on one screen (declarative tables and parsers included)."""
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long
