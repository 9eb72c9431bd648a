"""One package per algorithm: its config, its math, its stage and (for structural stages) its structure record.

The built-in stages register through the `compressor.stages` entry points (pyproject.toml), as plugins do; a
new stage is one folder here plus its entry point (CONTRIBUTING.md).
"""
