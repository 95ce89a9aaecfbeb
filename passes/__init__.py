"""Graph passes; each is a small object with ``run(state) -> state``."""

from lincompress.passes.find_attention import FindAttention
from lincompress.passes.fix import Fix
from lincompress.passes.hybridize import Hybridize
from lincompress.passes.recover import Recover, Report
from lincompress.passes.save import Save
from lincompress.passes.select import HeuristicSelect
from lincompress.passes.selective_transfer import GreedySelect, SelectiveTransfer

__all__ = [
    "FindAttention", "Fix", "GreedySelect", "HeuristicSelect", "Hybridize", "Recover", "Report", "Save",
    "SelectiveTransfer",
]
