"""torch -> ONNX for one graph of the table (TorchScript exporter, dynamic batch and text length)."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch
from torch import nn

from crisis_tool.export.options import DEFAULT_OPSET
from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.model_spec import GraphSpec


def example_inputs(spec: GraphSpec, dims: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """Trace inputs for a graph; batch 2 and text length 7 so that no dynamic dim is traced as 1."""
    sizes = {"B": 2, "L": 7, **{k: v for k, v in dims.items() if k not in ("B", "L")}}
    tensors = []
    for t in spec.inputs:
        shape = [sizes[d] if isinstance(d, str) else d for d in t.shape]
        if t.dtype == "int64":
            ids = torch.randint(1, 100, shape, dtype=torch.int64)
            ids[:, -1] = dims["eot"]
            tensors.append(ids)
        else:
            tensors.append(torch.randn(shape))
    return tuple(tensors)


def export_graph(
    module: nn.Module, spec: GraphSpec, path: Path, dims: dict[str, int], opset: int = DEFAULT_OPSET
) -> Path:
    """Export `module` to `path` as a single-file ONNX model and check it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs(spec, dims)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX symbolic
    try:
        with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # exporter failures are long; keep one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CrisisToolError(f"ONNX export of {spec.name} failed at opset {opset}: {first}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path))
    return path
