"""INT8 quantization: qparams (pure functions), QDQ placement and writer, calibration, PTQ driver."""
from .ptq import PTQConfig, quantize, quantize_onnx

__all__ = ["PTQConfig", "quantize", "quantize_onnx"]
