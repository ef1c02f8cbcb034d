"""The repository's layers (README, "Layout"): each package imports only from
itself and the packages below it, nothing imports a command-line tool's
script or entry point, and no module edits sys.path.

    dnnlib < torch_utils < training < metrics < sfbd < tools < entry points

Every import is read from the source with `ast`, those inside functions
included, so that a lazy import cannot hide a dependency that looks up.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS = ('dnnlib', 'torch_utils', 'training', 'metrics', 'sfbd', 'tools')

# The `python -m` entry points that live inside a package: thin shells over
# tools/, on the entry-point layer with the top-level scripts.
PACKAGE_ENTRY_POINTS = ('sfbd.rounds', 'sfbd.report', 'sfbd.demo')

#----------------------------------------------------------------------------
# The modules of a source tree and what each imports.

def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)

def source_files(root: Path) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith('.') and d not in ('tests', 'shared', '__pycache__'))
        files += [Path(directory) / name for name in sorted(names) if name.endswith('.py')]
    return files

def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """(line, [candidates]) for every module an import statement names, relative imports resolved:
    `from a import b` names a.b if that is a module, else a."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ''
            if node.level:
                parts = module.split('.')
                base = parts[:len(parts) - node.level + (1 if is_package else 0)]
                target = '.'.join(base + ([node.module] if node.module else []))
            found += [(node.lineno, [f'{target}.{alias.name}', target]) for alias in node.names]
    return found

def edits_sys_path(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == 'path' and isinstance(node.value, ast.Name) and node.value.id == 'sys':
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == 'addsitedir':
            lines.append(node.lineno)
    return lines

#----------------------------------------------------------------------------
# The rules.

def layer_of(module: str, scripts: set[str]) -> int | None:
    """The layer of a repository module; len(LAYERS) for an entry point; None outside the repository."""
    top = module.split('.')[0]
    if top in scripts or module in PACKAGE_ENTRY_POINTS or module.endswith('.__main__'):
        return len(LAYERS)
    return LAYERS.index(top) if top in LAYERS else None

def violations(root: Path) -> list[str]:
    files = source_files(root)
    scripts = {path.stem for path in files if path.parent == root}
    modules = {module_name(root, path) for path in files}
    found = []
    for path in files:
        module = module_name(root, path)
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        found += [f'{where}:{line}: edits sys.path' for line in edits_sys_path(tree)]
        own = layer_of(module, scripts)
        if own is None:
            found.append(f'{where}: in no layer (add its package to LAYERS)')
            continue
        seen = set()
        for line, candidates in imports_of(tree, module, path.name == '__init__.py'):
            if candidates[-1].split('.')[0] not in scripts | set(LAYERS):
                continue  # Outside the repository.
            target = next((name for name in candidates if name in modules), candidates[-1])
            while target not in modules and '.' in target:
                target = target.rsplit('.', 1)[0]
            if (line, target) in seen:
                continue
            seen.add((line, target))
            other = layer_of(target, scripts)
            if other == len(LAYERS):
                found.append(f'{where}:{line}: imports the entry point {target}')
            elif other is not None and other > own:
                found.append(f'{where}:{line}: {LAYERS[own] if own < len(LAYERS) else "entry point"} imports '
                             f'{target} of the layer above ({LAYERS[other]})')
    return found

#----------------------------------------------------------------------------

def test_every_import_looks_down():
    assert violations(REPO) == []

def test_entry_points_are_thin_shells():
    # A package's entry point holds its click table and one call; the work is in tools/.
    for name in PACKAGE_ENTRY_POINTS:
        path = REPO / (name.replace('.', '/') + '.py')
        tree = ast.parse(path.read_text(encoding='utf-8'))
        functions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert functions == ['main'], f'{path.name}: defines {functions}'

CASES = [
    ('training/x.py', 'from sfbd import online\n', 'training/x.py:1: training imports sfbd.online of the layer above (sfbd)'),
    ('sfbd/x.py', 'def f():\n    import train\n', 'sfbd/x.py:2: imports the entry point train'),
    ('tools/x.py', 'from sfbd.rounds import main\n', 'tools/x.py:1: imports the entry point sfbd.rounds'),
    ('sfbd/x.py', 'from ..tools import bench\n', 'sfbd/x.py:1: sfbd imports tools.bench of the layer above (tools)'),
    ('dnnlib/x.py', 'import sys\nsys.path.insert(0, ".")\n', 'dnnlib/x.py:2: edits sys.path'),
    ('sfbd/x.py', 'from training.sampler import edm_sigma_steps\nimport numpy\n', None),
]

@pytest.mark.parametrize('path, source, expected', CASES)
def test_the_rule_finds_what_looks_up(tmp_path, path, source, expected):
    # A small tree of its own: the layers' packages, a script, the entry point sfbd.rounds.
    for name in ['train.py', 'dnnlib/__init__.py', 'training/__init__.py', 'training/sampler.py', 'sfbd/__init__.py',
                 'sfbd/online.py', 'sfbd/rounds.py', 'tools/__init__.py', 'tools/bench.py']:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('')
    (tmp_path / path).write_text(source)
    assert violations(tmp_path) == ([] if expected is None else [expected])
