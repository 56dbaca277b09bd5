"""How much arithmetic the model needs and how much the CPU can do: the ceiling every runtime's speed sits under.

`.venv/bin/python -m bench.compute [THREADS] [--instruction-set avx2]` prints the CPU's peak alone.

A runtime's images/s times the model's multiply-accumulates per image, over the CPU's peak rate, is the share of the
hardware it uses; no runtime can pass 100%, which bounds what any speed-up between runtimes can be on a machine.
"""

import argparse
import math
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import shape_inference

PEAK_SOURCE = Path(__file__).with_name("fma_peak.c")

PEAK_RUNS = 3
"""The peak is the best of a few runs (about a second each): a run that shares a core with anything reads low."""

INSTRUCTION_SETS = ("avx512f", "avx2", "portable")
"""What bench/fma_peak.c can measure with, widest first: AVX-512F, AVX2 with FMA, 16-byte vectors of any CPU."""


@dataclass(frozen=True)
class Peak:
    """The CPU's float32 peak, and what it was measured on and with."""

    multiply_accumulates_per_second: float
    instruction_set: str
    """The one bench/fma_peak.c measured with (one of INSTRUCTION_SETS): a peak means little without it."""
    cpu: str

    def __str__(self) -> str:
        return f"{self.multiply_accumulates_per_second / 1e9:.0f} G multiply-accumulates/s " \
               f"({self.instruction_set} on {self.cpu})"


class PeakMeasurementError(RuntimeError):
    """bench/fma_peak.c refused to measure: an instruction set was forced that this CPU does not have."""


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


def cpu_peak(threads: int, *, instruction_set: str | None = None, runs: int = PEAK_RUNS) -> Peak | None:
    """The CPU's float32 peak on `threads` cores, measured by bench/fma_peak.c; None without a C compiler.

    The program picks the widest instruction set the CPU has; `instruction_set` (avx512f, avx2 or portable), or else
    FMA_PEAK_ISA in the environment, forces one. Raises PeakMeasurementError if the CPU lacks the one forced.
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    env = {**os.environ, **({"FMA_PEAK_ISA": instruction_set} if instruction_set else {})}
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "fma_peak"
        # no -march=native: each instruction set's loop carries its own target attribute and the choice is made
        # when the program runs, so the portable fallback stays portable
        subprocess.run([compiler, "-O3", "-pthread", str(PEAK_SOURCE), "-o", str(binary)], check=True)
        measured = [_run_once(binary, threads, env) for _ in range(runs)]
    used, rate = max(measured, key=lambda run: run[1])
    return Peak(multiply_accumulates_per_second=rate, instruction_set=used, cpu=cpu_model())


def cpu_model() -> str:
    """The CPU's name as the kernel reports it ("model name" in /proc/cpuinfo), else what Python knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _run_once(binary: Path, threads: int, env: dict[str, str]) -> tuple[str, float]:
    run = subprocess.run([str(binary), str(threads)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise PeakMeasurementError(f"bench/fma_peak.c: {run.stderr.strip()}")
    instruction_set, rate = run.stdout.split()
    return instruction_set, float(rate)


def main() -> None:
    parser = argparse.ArgumentParser(description="The CPU's float32 peak, measured by bench/fma_peak.c.")
    parser.add_argument("threads", type=int, nargs="?", default=os.cpu_count() or 1)
    parser.add_argument("--instruction-set", choices=INSTRUCTION_SETS,
                        help="force one (default: the widest this CPU has)")
    args = parser.parse_args()
    print(cpu_peak(args.threads, instruction_set=args.instruction_set) or "not measured: no C compiler")


if __name__ == "__main__":
    main()
