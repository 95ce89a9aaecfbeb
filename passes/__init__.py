"""Graph passes; each is a small object with ``run(state) -> state``."""

from lincompress.passes.find_attention import FindAttention
from lincompress.passes.fix import Fix
from lincompress.passes.hybridize import Hybridize
from lincompress.passes.save import Save
from lincompress.passes.select import HeuristicSelect

__all__ = ["FindAttention", "Fix", "HeuristicSelect", "Hybridize", "Save"]
