"""The package's layers: what ``import rotplugin`` and its light core load, no import cycle among rotplugin's
modules, and configs that register every rotplugin type they use."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rotplugin"
MM = ("mmcv", "mmdet", "mmrotate", "mmengine", "mmdeploy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rotplugin_import_graph():
    """``{module: {rotplugin modules it imports}}`` from the source (module-level and function-local imports
    alike): ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_among_rotplugin_modules():
    graph = rotplugin_import_graph()
    assert "rotplugin.fields" in graph and "rotplugin.canvas" in graph["rotplugin.fields"]  # the walk sees edges
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def _loaded(code: str):
    """``(top-level packages in sys.modules, output)`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys; print('LOADED', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True)
    text, loaded = out.stdout.split("LOADED", 1)
    return set(loaded.split()), text


@pytest.mark.parametrize("code, banned", [
    ("import rotplugin", MM + ("torch", "escnn", "numpy", "cv2")),
    ("import rotplugin.canvas, rotplugin.boxes", MM + ("escnn",)),
    ("import rotplugin.timing", MM + ("torch", "escnn", "numpy")),
    ("import rotplugin.fields", MM),
    ("import rotplugin.data, rotplugin.data.dota_split, rotplugin.data.dota_synth, rotplugin.data.dota_eval",
     MM + ("torch", "escnn")),
    ("import rotplugin.io, rotplugin.nn, rotplugin.ops, rotplugin.equivariance", MM),
    # what a deployed model needs: the ONNX Runtime runner with its TTA merge, the kept RiRoIExtractor (e2cnn may
    # load: mmrotate's own ReDet backbone imports it when it is installed)
    ("import rotplugin.deploy.onnx, rotplugin.models.tta_views, rotplugin.models.roi_extractors", ("escnn",)),
])
def test_light_layers_load_no_heavy_package(code, banned):
    loaded, _ = _loaded(code)
    assert "rotplugin" in loaded
    assert not loaded & set(banned), sorted(loaded & set(banned))


def test_data_tools_load_no_mm_package():
    code = ("import runpy, sys\n"
            "for tool in ('tools/dota_split.py', 'tools/make_synthetic_dota.py', 'tools/eval_dota.py'):\n"
            "    sys.argv = [tool, '--help']\n"
            "    try:\n        runpy.run_path(tool, run_name='__main__')\n    except SystemExit:\n        pass\n")
    loaded, text = _loaded(code)
    assert "--img-dir" in text and "--num-images" in text and "--image-set" in text  # all printed their help
    assert "rotplugin" in loaded and "cv2" in loaded
    assert not loaded & set(MM + ("torch", "escnn")), sorted(loaded & set(MM + ("torch", "escnn")))


CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py"))
_REGISTERED = r"""
import json, sys
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings
from mmrotate.registry import HOOKS, METRICS, MODELS, TASK_UTILS

def types(o):
    if isinstance(o, dict):
        if isinstance(o.get("type"), str):
            yield o["type"].split(".")[-1]
        for v in o.values():
            yield from types(v)
    elif isinstance(o, (list, tuple)):
        for v in o:
            yield from types(v)

def lookup(names):
    found = {}
    for name in names:
        cls = next((r.get(name) for r in (MODELS, TASK_UTILS, HOOKS, METRICS) if r.get(name) is not None), None)
        found[name] = getattr(cls, "__module__", None)
    return found

cfgs = {path: Config.fromfile(path, import_custom_modules=False) for path in sys.argv[1:]}
used = {path: sorted(set(types(cfg.to_dict()))) for path, cfg in cfgs.items()}
report = {"bare": {path: lookup(names) for path, names in used.items()}}
for cfg in cfgs.values():      # what mmengine does with custom_imports when it reads a config
    import_modules_from_strings(**cfg.custom_imports)
report["custom"] = {path: lookup(names) for path, names in used.items()}
print("FOUND", json.dumps(report))
"""


def registered_class_names():
    """The names of the classes rotplugin's source registers (``@REGISTRY.register_module()``), found statically so
    that a module :mod:`rotplugin.mm` forgets to import still counts."""
    names = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", None) == "register_module"
                    for d in node.decorator_list):
                names.add(node.name)
    return names


def test_config_custom_imports_register_every_rotplugin_type_it_uses():
    ours = registered_class_names()
    assert {"EquivariantResNet", "RotationTTAHook", "DOTAClassAPMetric", "CircumscribedHBoxOverlaps2D"} <= ours
    out = subprocess.run([sys.executable, "-c", _REGISTERED, *CONFIGS], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    report = json.loads(out.stdout.split("FOUND", 1)[1])
    for config in CONFIGS:
        used = {name for name in report["custom"][config] if name in ours}
        assert {"EquivariantResNet", "EquivariantFPN", "EquivariantDetDataPreprocessor",
                "FeatureRotationTTAModel"} <= used, (config, used)
        # before the custom_imports ran, none of them was registered; after, each is, by rotplugin
        assert all(report["bare"][config][name] is None for name in used), (config, report["bare"][config])
        missing = {name for name in used if not (report["custom"][config][name] or "").startswith("rotplugin.")}
        assert not missing, f"{config} uses {sorted(missing)}, which its custom_imports do not register"
