"""Packaging: the distributions setup.cfg declares are exactly those the installed package imports, optional
ones are imported only where used, torch is a range (pinned only in requirements.lock), and the licence the
metadata names is there."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# Imports whose module belongs to one distribution but needs another one installed to work.
NEEDS = {"torch.utils.tensorboard": "tensorboard"}
TRAINING_ONLY = "train"  # modules of this subpackage may import the [train] extra at their top


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in text.strip().splitlines() if line.strip()]


def declared() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    """install_requires and the extras (without dev) as {distribution: requirement}."""
    cfg = setup_cfg()
    core = {normal(r.name): r for r in requirements(cfg["options"]["install_requires"])}
    extras = {extra: {normal(r.name): r for r in requirements(text)}
              for extra, text in cfg["options.extras_require"].items() if extra != "dev"}
    return core, extras


def package_modules() -> list[tuple[str, Path]]:
    """(subpackage, file) of every module installed: the folders setup.cfg's ``packages`` name."""
    cfg = setup_cfg()
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    root = ROOT / mapping["specbert "].strip()
    modules = []
    for package in cfg["options"]["packages"].replace(",", " ").split():
        sub = package.removeprefix("specbert").lstrip(".")
        folder = root.joinpath(*sub.split(".")) if sub else root
        modules += [(sub, path) for path in sorted(folder.glob("*.py"))]
    return modules


def third_party_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at the module's top level?) of every absolute import that is neither the standard
    library nor specbert."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            first = name.split(".")[0]
            if first not in sys.stdlib_module_names and first not in ("specbert", "__future__"):
                found.append((name, id(node) in top))
    return found


def distribution(module: str) -> str:
    """The distribution an import needs (from the installed distributions' top-level names)."""
    for prefix, needed in NEEDS.items():
        if module == prefix or module.startswith(prefix + "."):
            return needed
    first = module.split(".")[0]
    return normal(packages_distributions().get(first, [first])[0])


def test_declared_distributions_are_the_imported_ones():
    core, extras = declared()
    everything = set(core).union(*extras.values())
    imported = {distribution(name) for _, path in package_modules() for name, _ in third_party_imports(path)}
    assert sorted(imported - everything) == [], "imported but not declared in setup.cfg"
    assert sorted(everything - imported) == [], "declared in setup.cfg but never imported"


def test_optional_distributions_are_imported_only_where_used():
    """An extra's module is imported inside the function that needs it (or at the top of a training module,
    which needs [train]), so `import specbert` and the commands that do not need it work without it."""
    core, extras = declared()
    allowed = set(core) | set(extras["train"])
    misplaced = [f"{path.relative_to(ROOT)}: {name}"
                 for sub, path in package_modules() for name, at_top in third_party_imports(path)
                 if at_top and distribution(name) not in (allowed if sub == TRAINING_ONLY else set(core))]
    assert misplaced == []


def test_torch_is_a_range_and_the_lock_pins_what_make_installs_within_the_ranges():
    """`make` installs requirements.lock: all but the dashboard's distributions, each in its range."""
    core, extras = declared()
    assert not any(spec.operator == "==" for spec in core["torch"].specifier)
    lock = {normal(r.name): r for r in requirements((ROOT / "requirements.lock").read_text())}
    wanted = {**core, **{name: r for extra, reqs in extras.items() if extra != "dashboard"
                         for name, r in reqs.items()}}
    for name, requirement in wanted.items():
        assert name in lock, f"{name} is not pinned in requirements.lock"
        (pin,) = lock[name].specifier
        assert pin.operator == "==" and requirement.specifier.contains(pin.version), (name, pin)


def test_the_licence_the_metadata_names_is_there():
    meta = setup_cfg()["metadata"]
    assert meta["license"] == "MIT"
    text = (ROOT / meta["license_files"].strip()).read_text()
    assert text.startswith("MIT License") and "specbert developers" in text
