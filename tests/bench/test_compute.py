from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.compute import INSTRUCTION_SETS, PeakMeasurementError, cpu_model, cpu_peak, multiply_accumulates_per_image


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


def _cpu_has(instruction_set: str) -> bool:
    """Whether this CPU has it, from the kernel's flags: apart from the C program's own check, which is under test."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    needs = {"avx512f": ["avx512f"], "avx2": ["avx2", "fma"], "portable": []}[instruction_set]
    return all(flag in flags for flag in needs)


@pytest.mark.bench
def test_the_cpu_peak_is_measured_with_the_widest_instruction_set_the_cpu_has():
    one_core = cpu_peak(1)

    assert one_core is not None
    assert one_core.instruction_set == next(name for name in INSTRUCTION_SETS if _cpu_has(name))
    assert one_core.multiply_accumulates_per_second > 1e9  # even a scalar core without vectors does a billion a second
    assert one_core.cpu == cpu_model() and one_core.cpu
    assert one_core.instruction_set in str(one_core) and one_core.cpu in str(one_core)


@pytest.mark.bench
@pytest.mark.parametrize("instruction_set", INSTRUCTION_SETS)
def test_a_forced_instruction_set_is_measured_and_named_or_refused_if_the_cpu_lacks_it(instruction_set):
    if not _cpu_has(instruction_set):
        with pytest.raises(PeakMeasurementError, match=f"FMA_PEAK_ISA={instruction_set}: this CPU does not have it"):
            cpu_peak(1, instruction_set=instruction_set, runs=1)
        return

    peak = cpu_peak(1, instruction_set=instruction_set, runs=1)

    assert peak is not None and peak.instruction_set == instruction_set
    assert peak.multiply_accumulates_per_second > 1e9


@pytest.mark.bench
def test_an_unknown_instruction_set_is_refused_with_the_ones_there_are():
    with pytest.raises(PeakMeasurementError, match=r"FMA_PEAK_ISA=sse: unknown; one of .*portable"):
        cpu_peak(1, instruction_set="sse", runs=1)
