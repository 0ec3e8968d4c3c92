"""Export of a trained run to a portable bundle: ONNX graphs, parity gates,
int8/fp16 variants, TensorRT engines."""
