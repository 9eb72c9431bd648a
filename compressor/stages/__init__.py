"""Built-in stages; importing this package registers them."""
from compressor.stages import basis, prune, quantize, shrink  # noqa: F401
