"""adapter.training_adapter: read a LoRA file into the frozen pairs that sit under the trained adapter for a run
(adapters/frozen.py; docs/recipe.md, "The training adapter"). No ComfyUI imports."""

from __future__ import annotations

import logging
from pathlib import Path

from ..adapters.frozen import FrozenLoRA
from ..errors import FormatError
from .formats import check_fits, read_lora
from .weights_errors import naming

log = logging.getLogger(__name__)
FIELD = "adapter.training_adapter"


def load_training_adapter(path: str | Path, backbone) -> dict[str, FrozenLoRA]:
    """{native Linear name: FrozenLoRA} from LoRA file `path` (any layout formats.read_lora reads), on the
    backbone's device in its dtype, its alpha / rank folded in.

    Raises:
        FormatError: naming adapter.training_adapter, the file, the problem (missing, a folder, damaged, LoHa/LoKr
            weights, modules or shapes that do not fit the model) and the fix.
    """
    p = Path(path)
    with naming(FIELD, p, FormatError):
        if p.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(p))
        mods = read_lora(p, backbone.arch)
        if not mods:
            raise FormatError(f"{FIELD}: {p} holds no LoRA pair with weights (all zero or empty). Give the "
                              "training adapter's LoRA file")
        check_fits(mods, backbone)
    device, dtype = backbone.device, backbone.dtype
    out = {name: FrozenLoRA(m.down.to(device, dtype), (m.up * m.scale).to(device, dtype)) for name, m in mods.items()}
    rank = max(m.down.shape[0] for m in mods.values())
    log.info("%s: %s, %d modules (rank up to %d) under the trained adapter; left out of the saved file and of the "
             "previews", FIELD, p.name, len(out), rank)
    return out


__all__ = ["FIELD", "load_training_adapter"]
