"""The package's layers: each heavy library behind one module, the pure core free of them."""

import ast
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
