"""The torch reference backend maps `--device` the way the other backends spell it, and refuses the rest."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from crisis_tool.runtime.errors import UsageError  # noqa: E402
from crisis_tool.torch_reference import torch_device  # noqa: E402


@pytest.mark.parametrize(("flag", "expected"), [("CPU", "cpu"), ("cpu", "cpu")])
def test_cpu_spellings(flag: str, expected: str) -> None:
    assert torch_device(flag) == expected


@pytest.mark.parametrize("flag", ["NPU", "AUTO", "gpu0", ""])
def test_devices_torch_cannot_run_are_usage_errors(flag: str) -> None:
    with pytest.raises(UsageError, match="--device"):
        torch_device(flag)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_without_cuda_is_one_line() -> None:
    with pytest.raises(UsageError, match="sees no CUDA GPU"):
        torch_device("GPU")


def test_predict_with_a_bad_device_on_torch_exits_2(tiny_bundle, tmp_path, capsys) -> None:
    from crisis_tool.cli import run

    records = tmp_path / "r.jsonl"
    records.write_text('{"id": "a", "text": "flood", "image": "missing.jpg"}\n', encoding="utf-8")
    code = run(["predict", "--bundle", str(tiny_bundle), "--input", str(records), "--output",
                str(tmp_path / "out.jsonl"), "--backend", "torch", "--device", "NPU"])
    err = capsys.readouterr().err
    assert code == 2 and "--device 'NPU'" in err and "Traceback" not in err
