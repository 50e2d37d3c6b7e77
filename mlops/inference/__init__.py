"""What ships: the serving-side predictor contract, input decoding and explanations.

Shared by training (evaluation) and serving so preprocessing cannot drift; imports no training code.
"""

from mlops.inference.base import BadInput, Predictor, load_predictor

__all__ = ["BadInput", "Predictor", "load_predictor"]
