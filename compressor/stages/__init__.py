"""Built-in stages; importing this package registers them."""
from compressor.stages import prune, quantize, shrink  # noqa: F401
