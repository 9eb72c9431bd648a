"""Built-in stages; importing this package registers them."""
from compressor.stages import prune, quantize, shrink  # noqa: F401
from compressor.stages import rpg  # noqa: F401
from compressor.stages import basis  # noqa: F401
