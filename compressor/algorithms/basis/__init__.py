"""basis: change of basis of depth-wise weights (Queiruga et al., Stateful ODE-Nets): the bases and projection
(`functions.py`), the stack module (`stack.py`), stack detection (`stacks.py`), the ONNX rewrites (`onnx_graph.py`),
the structure record (`structure.py`) and the stage (`stage.py`)."""
from compressor.algorithms.basis.stage import BasisConfig, BasisStage
from compressor.algorithms.basis.structure import HANDLER

__all__ = ["HANDLER", "BasisConfig", "BasisStage"]
