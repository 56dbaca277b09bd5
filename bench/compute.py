"""How much arithmetic the model needs and how much the CPU can do: the ceiling every runtime's speed sits under.

A runtime's images/s times the model's multiply-accumulates per image, over the CPU's peak rate, is the share of the
hardware it uses; no runtime can pass 100%, which bounds what any speed-up between runtimes can be on a machine.
"""

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import onnx
from onnx import shape_inference

PEAK_SOURCE = Path(__file__).with_name("fma_peak.c")

PEAK_RUNS = 3
"""The peak is the best of a few runs (about a second each): a run that shares a core with anything reads low."""


def multiply_accumulates_per_image(onnx_file: Path) -> int:
    """Multiply-accumulates of one image's forward pass: every Conv, Gemm and MatMul (the rest is negligible)."""
    model = shape_inference.infer_shapes(onnx.load(onnx_file))
    graph = model.graph
    shapes = {value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
              for value in [*graph.value_info, *graph.output]}
    weights = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            _, kernel_channels, *kernel = weights[node.input[1]]  # (out, in / group, kh, kw)
            _, *output = shapes[node.output[0]]  # (batch, channels, height, width): the batch is not counted
            total += math.prod(output) * kernel_channels * math.prod(kernel)
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            total += math.prod(weights[node.input[1]])
    return total


def peak_multiply_accumulates_per_second(threads: int) -> float | None:
    """The CPU's float32 peak on `threads` cores, measured by bench/fma_peak.c; None without a C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "fma_peak"
        subprocess.run([compiler, "-O3", "-march=native", "-pthread", str(PEAK_SOURCE), "-o", str(binary)],
                       check=True)
        return max(float(subprocess.run([str(binary), str(threads)], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(PEAK_RUNS))
