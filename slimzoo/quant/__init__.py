"""INT8 quantization: qparams (pure functions), QDQ placement and writer, calibration, PTQ driver, and the
check of what the runtime makes of the file."""
from .check import Int8Check, check_int8, integer_layers
from .ptq import Int8Warning, PTQConfig, quantize, quantize_onnx

__all__ = ["Int8Check", "Int8Warning", "PTQConfig", "check_int8", "integer_layers", "quantize", "quantize_onnx"]
