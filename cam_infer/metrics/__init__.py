"""How good is a map: faithfulness (forward passes of the bundle's backend) and localisation
against ground-truth boxes. Every function takes plain arrays; `cam_infer.audit` runs them over folders.
"""

from .adcc import adcc, coherency, complexity  # noqa: F401
from .faithfulness import (auc, average_drop, causal_curve, causal_frames, class_probabilities,  # noqa: F401
                           explanation_inputs, increase_in_confidence, substrate_of)
from .localisation import (box_from_map, box_localisation, energy_pointing, iou, pointing_game,  # noqa: F401
                           pointing_hit)
from .segmentation import energy_in_region, pointing_in_region, uniform_baseline  # noqa: F401

__all__ = ["adcc", "auc", "average_drop", "box_from_map", "box_localisation", "causal_curve", "causal_frames",
           "class_probabilities", "coherency", "complexity", "energy_pointing", "explanation_inputs",
           "increase_in_confidence", "iou", "pointing_game", "pointing_hit", "substrate_of"]
__all__ += ["energy_in_region", "pointing_in_region", "uniform_baseline"]
from .road import arcc, arcc_coherency, linear_imputation, noisy_linear_imputation  # noqa: F401
__all__ += ["arcc", "arcc_coherency", "linear_imputation", "noisy_linear_imputation"]
