"""Built-in stages; importing this package registers them."""
from compressor.stages import quantize  # noqa: F401
