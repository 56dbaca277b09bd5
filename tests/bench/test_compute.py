import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.compute import multiply_accumulates_per_image, peak_multiply_accumulates_per_second


def test_multiply_accumulates_count_every_conv_and_gemm_once_per_image(tmp_path):
    # (2, 3, 8, 8) -> 3x3 conv to 4 channels, padded: 8*8 outputs x 4 channels x (3*3*3) = 6912
    # -> depthwise 3x3 (group 4), padded: 8*8 x 4 x (1*3*3) = 2304 -> global pool -> (4 x 5) gemm: 20
    weights = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "conv_w"),
        numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "depthwise_w"),
        numpy_helper.from_array(np.ones((4, 5), np.float32), "dense_w"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "depthwise_w"], ["b"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("GlobalAveragePool", ["b"], ["c"]),
        helper.make_node("Reshape", ["c", "flat"], ["d"]),
        helper.make_node("MatMul", ["d", "dense_w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], weights)
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    assert multiply_accumulates_per_image(path) == 6912 + 2304 + 20


def test_the_cpu_peak_is_measured_by_running_the_c_program():
    one_core = peak_multiply_accumulates_per_second(1)

    assert one_core is not None
    assert one_core > 1e9  # even a scalar core without vectors does a billion a second
