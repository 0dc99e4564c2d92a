"""The package's layers: configs -> pipeline / model -> train / inference -> cli; no upward import."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# utilities that import nothing from the project: any layer may use them
BASE = {"messages", "provenance"}
# what each top-level part may import from the project (itself and BASE always)
ALLOWED = {
    **dict.fromkeys(BASE, set()),
    "configs": set(),
    "pipeline": {"configs"},
    "model": {"configs"},
    "inference": {"configs", "pipeline", "model"},
    "train": {"configs", "pipeline", "model", "inference"},
    "cli": {"configs", "pipeline", "model", "train", "inference"},
    "__init__": {"inference"},
}
# the loaders' modules, with their webdataset, worker and batch machinery: never needed to separate
LOADERS = {"pipeline.loader", "pipeline.stems_loader", "pipeline.stages", "pipeline.batch_ring",
           "pipeline.worker", "pipeline.ingest", "pipeline.tasks"}


def project_imports(path: Path) -> set[str]:
    """``specbert.X.Y`` modules imported anywhere in ``path`` (also inside functions), as ``X.Y``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "specbert":  # from specbert import X
            names = [f"specbert.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found.update(name.removeprefix("specbert.") for name in names if name.startswith("specbert."))
    return found


def modules() -> dict[str, Path]:
    parts = [p for p in ALLOWED if p != "__init__"]
    files = {part: ROOT / f"{part}.py" for part in ("cli", "__init__", *BASE)}
    for part in parts:
        for path in sorted((ROOT / part).glob("*.py")) if (ROOT / part).is_dir() else ():
            files[f"{part}.{path.stem}"] = path
    return files


def test_no_module_imports_a_higher_layer():
    wrong = []
    for name, path in modules().items():
        part = name.split(".")[0]
        for imported in project_imports(path):
            top = imported.split(".")[0]
            allowed = ALLOWED[part] | {part} | (BASE if part not in BASE else set())
            if top not in allowed:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_inference_needs_no_loader():
    wrong = [f"{name} imports {imported}" for name, path in modules().items() if name.startswith("inference")
             for imported in project_imports(path) if imported in LOADERS]
    assert not wrong, wrong
