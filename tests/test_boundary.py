"""Where ComfyUI may be imported, and how the library's packages may import each other (docs/architecture.md, "Boundaries").

Rule: only `lumina2_train/comfyui/`, `nodes/`, `lumina2_train/backbones/comfy.py`, `lumina2_train/encoders/comfy.py`
and `lumina2_train/tiny/comfy_*.py` import ComfyUI's modules, and inside `lumina2_train/` only inside functions, so
that `import lumina2_train` (and any of its modules) loads no ComfyUI module.
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                 "execution", "latent_preview", "node_helpers", "comfy_config", "app", "utils"}
ALLOWED = ("lumina2_train/comfyui/", "nodes/", "lumina2_train/backbones/comfy.py", "lumina2_train/encoders/comfy.py",
           "lumina2_train/tiny/comfy_")


def _comfy_imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) for every absolute import of a ComfyUI module."""
    found = []

    def walk(node, at_top):
        for child in ast.iter_child_nodes(node):
            inner = at_top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module or ""]
            else:
                names = []
            found.extend((child.lineno, n, at_top) for n in names if n.split(".")[0] in COMFY_MODULES)
            walk(child, inner)

    walk(tree, True)
    return found


def _modules() -> list[Path]:
    files = [REPO / "__init__.py", *(REPO / "lumina2_train").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]
    assert len(files) > 100, "the walk found too few modules"
    return files


def test_only_the_comfyui_glue_imports_comfyui_and_the_library_only_inside_functions():
    wrong, checked = [], 0
    for path in _modules():
        rel = path.relative_to(REPO).as_posix()
        for line, name, at_top in _comfy_imports(ast.parse(path.read_text(), rel)):
            checked += 1
            if not rel.startswith(ALLOWED):
                wrong.append(f"{rel}:{line}: imports {name} (only the ComfyUI glue may; move the code there)")
            elif rel.startswith("lumina2_train/") and at_top:
                wrong.append(f"{rel}:{line}: imports {name} at import time (import it inside the function)")
    assert checked > 10, "no ComfyUI import found at all: the walk is broken"
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_function_local_and_module_level_imports():
    tree = ast.parse("import os\nimport comfy.sd\ndef f():\n    from server import PromptServer\n"
                     "    import folder_paths as fp\nfrom .nodes import x\nfrom nodes import NODE_CLASS_MAPPINGS\n")
    assert _comfy_imports(tree) == [(2, "comfy.sd", True), (4, "server", False), (5, "folder_paths", False),
                                    (7, "nodes", True)]


def test_importing_the_library_loads_no_comfyui_module():
    names = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                   for p in (REPO / "lumina2_train").rglob("*.py") if p.name != "__main__.py")
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {sorted(COMFY_MODULES)!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def _package_imports() -> dict[str, set[str]]:
    """{package: packages it imports at module level} over lumina2_train's top-level packages and modules."""
    root, graph = REPO / "lumina2_train", {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        here = parts if path.name == "__init__.py" else parts[:-1]  # the package relative imports start from
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                target = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [target + [a.name] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lumina2_train."):
                names = [node.module.split(".")]
            else:
                continue
            src = parts[1] if len(parts) > 1 and parts[1] != "__init__" else None
            for name in names:
                if src and len(name) > 1 and name[1] != src:
                    graph.setdefault(src, set()).add(name[1])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), [])


def test_the_library_packages_import_each_other_without_a_cycle():
    """Module-level imports between lumina2_train's packages form no cycle (function-local imports may point back:
    config's checks read adapters/kinds.py that way)."""
    graph = _package_imports()
    assert {"backbones", "files", "train", "comfyui", "adapters"} <= set(graph), graph
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"] and not _cycle({"a": {"b"}})
    assert not _cycle(graph), " -> ".join(_cycle(graph))
