"""adapter.init_from: start a run's adapters from an existing file. No ComfyUI imports."""

from __future__ import annotations

from pathlib import Path

from ..adapters.kinds import kind_of
from ..errors import FormatError
from .formats import check_fits, read_adapter_tensors, read_lora
from .weights_errors import naming


def load_init_from(adapters, backbone, path: str | Path) -> None:
    """Load `path` into `adapters`: a LoRA from any format we read; LoHa/LoKr/DoRA from ComfyUI files.

    Raises:
        FormatError: naming adapter.init_from, the file, the problem (missing, a folder, truncated or another
            kind of file, missing halves of a pair, shapes that do not fit the model) and the fix.
    """
    p = Path(path)
    with naming("adapter.init_from", p, FormatError):
        if p.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(p))
        if kind_of(adapters.config).init_from == "any":
            mods = read_lora(p, backbone.arch)
            check_fits(mods, backbone)
            for name, mod in mods.items():
                if name in adapters.names:
                    adapters[name].load_tensors(mod.down, mod.up, mod.alpha)
            return
        for name, tensors in read_adapter_tensors(p).items():
            if name in adapters.names:
                adapters[name].load_file_tensors(tensors)
