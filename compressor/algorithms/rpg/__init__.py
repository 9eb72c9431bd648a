"""rpg: recurrent parameter generator (Wang et al., WACV 2023): the ring math (`ring.py`), its ONNX rewrites
(`onnx_graph.py`), the structure record (`structure.py`) and the stage (`stage.py`)."""
from compressor.algorithms.rpg.stage import RpgConfig, RpgStage
from compressor.algorithms.rpg.structure import HANDLER

__all__ = ["HANDLER", "RpgConfig", "RpgStage"]
