"""`python -m compressor ...` runs the `compress` command (as under a launcher such as `torchrun -m`)."""
from compressor.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
