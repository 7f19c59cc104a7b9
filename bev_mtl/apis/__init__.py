"""Deployment-facing APIs: ``Predictor`` (numpy in, numpy out) and the ONNX export helpers."""
from bev_mtl.apis.predictor import Predictor, load_model, preprocess, to_numpy_predictions

__all__ = ["Predictor", "load_model", "preprocess", "to_numpy_predictions"]
