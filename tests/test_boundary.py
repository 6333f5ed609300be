"""The library never imports ComfyUI at import time (STYLE.md rule 2)."""

import subprocess
import sys


def test_importing_the_library_loads_no_comfyui_module():
    code = (
        "import sys, lumina2_train, lumina2_train.config, lumina2_train.recipe, lumina2_train.formats, "
        "lumina2_train.train, lumina2_train.backbones.diffusers, lumina2_train.cli, lumina2_train.pipeline\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'comfy_extras', "
        "'folder_paths', 'server', 'nodes', 'execution')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
