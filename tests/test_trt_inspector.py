"""Engine layer precisions from IEngineInspector JSON (formats as TensorRT 8.6 and 11 print them)."""

from __future__ import annotations

from pipeline.trt.inspector import layer_precision, precision_summary, tensor_dtype

# Entries in the form TensorRT 8.6's inspector writes (ProfilingVerbosity.DETAILED).
CONV_INT8 = {
    "Name": "/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu", "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [256, 64, 56, 56], "Format/Datatype": "Int8 NC/32HW32"}],
    "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [256, 64, 56, 56], "Format/Datatype": "Int8 NC/32HW32"}],
}
CONV_FP16 = {
    "Name": "/conv1/Conv", "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "in", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
    "Outputs": [{"Name": "out", "Format/Datatype": "Int8 NC/32HW32"}],
}
REFORMAT = {
    "Name": "Reformatting CopyNode for Input Tensor 0 to /conv1/Conv", "LayerType": "Reformat",
    "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
    "Outputs": [{"Name": "in", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
}
CONSTANT = {"Name": "onnx::Conv_662", "LayerType": "Constant", "Inputs": [],
            "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP16 format"}]}
GEMM_TRT11 = {"Name": "/fc/Gemm", "LayerType": "gemm",
              "Inputs": [{"Name": "a", "Format": "Row major linear", "DataType": "Int8"}], "Outputs": []}


def test_tensor_dtype_reads_both_schemas():
    assert tensor_dtype({"Format/Datatype": "Int8 NC/32HW32"}) == "int8"
    assert tensor_dtype({"Format/Datatype": "Row major linear FP32"}) == "fp32"
    assert tensor_dtype({"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}) == "fp16"
    assert tensor_dtype({"Format": "Row major linear", "DataType": "Half"}) == "fp16"
    assert tensor_dtype({"Format": "Row major linear", "DataType": "Int8"}) == "int8"
    assert tensor_dtype({"Format/Datatype": "something new"}) is None


def test_layer_precision_is_the_input_type():
    assert layer_precision(CONV_INT8) == "int8"
    assert layer_precision(CONV_FP16) == "fp16"  # writes Int8, but computes in FP16
    assert layer_precision(CONSTANT) == "fp16"  # no inputs: outputs decide


def test_precision_summary_counts_compute_layers_and_names_the_non_int8_ones():
    s = precision_summary([CONV_INT8, CONV_INT8, CONV_FP16, REFORMAT, CONSTANT, GEMM_TRT11, "bare name"])
    assert s["layers"] == 5  # constants and bare names are not layers that run
    assert s["by_precision"] == {"int8": 3, "fp16": 1, "fp32": 1}
    assert s["compute_layers"] == 4
    assert s["compute_by_precision"] == {"int8": 3, "fp16": 1}
    assert s["compute_not_int8"] == ["/conv1/Conv"]
