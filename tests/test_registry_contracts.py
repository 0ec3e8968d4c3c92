"""Contract tests over the registries (as optimum's `test_all_models_tested`): every registered backend and every
export format goes through the same contract, and a guard fails when one is registered without being here.

Backends: load the tiny bundle, run fp32 on a batch with a bad record (one output per record, in order, the bad
one an error naming its record and field), close twice, refuse a precision it cannot run in one line. A backend
whose engine is not installed here is skipped with its reason. Formats: the row is consistent, an option the
format does not read is one line, the wrong source is one line, and a format that runs here builds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

from crisis_tool.export.formats import BUNDLE, EXPORT_FORMATS, RUN_DIR, check_request
from crisis_tool.export.options import ExportOptions
from crisis_tool.runtime.backends import backend_unavailable_reason, create_backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import CrisisToolError, UsageError
from crisis_tool.runtime.records import Record

CONTRACT_BACKENDS = ("onnxruntime", "tensorrt", "openvino", "torch", "auto")
# format -> (an option it does not read, as ExportOptions keyword arguments)
CONTRACT_FORMATS = {
    "onnx": {"timing_cache": Path("cache.bin")},
    "trt": {"opset": 13},
    "triton": {"timing_cache": Path("cache.bin")},
}


def _pristine(expression: str) -> list[str]:
    """A registry as a fresh interpreter sees it (tests elsewhere register fakes in this one)."""
    code = f"import json; {expression}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_registered_backend_is_in_the_contract_suite() -> None:
    names = _pristine("from crisis_tool.runtime.backends import backend_names; print(json.dumps(backend_names()))")
    assert set(names) == set(CONTRACT_BACKENDS), "add the new backend to CONTRACT_BACKENDS"


def test_every_export_format_is_in_the_contract_suite() -> None:
    names = _pristine("from crisis_tool.export.formats import EXPORT_FORMATS; print(json.dumps(list(EXPORT_FORMATS)))")
    assert set(names) == set(CONTRACT_FORMATS), "add the new format to CONTRACT_FORMATS"


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    root = tmp_path_factory.mktemp("contract")
    out = []
    for i, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        path = root / f"{i}.jpg"
        Image.new("RGB", (48 + 8 * i, 40), colour).save(path)
        out.append(Record(f"r{i}", f"bridge collapsed near the river {i}", str(path)))
    out.insert(1, Record("bad", "photo of the flood", str(root / "missing.jpg")))
    return out


def _skip_unless_installed(name: str) -> None:
    reason = backend_unavailable_reason(name)
    if reason:
        pytest.skip(f"{name} is not usable here: {reason}")


@pytest.mark.parametrize("name", CONTRACT_BACKENDS)
def test_backend_contract(name: str, tiny_bundle: Path, records: list[Record]) -> None:
    from crisis_tool.runtime.predictor import Predictor

    _skip_unless_installed(name)
    predictor = Predictor.from_bundle(tiny_bundle, backend=name, precision="fp32", batch_size=8)
    try:
        predictions = predictor.predict(records)
    finally:
        predictor.close()
    assert [p.id for p in predictions] == [r.id for r in records]  # one output per record, in order
    bad = predictions[1]
    assert bad.error and "record bad" in bad.error and "field 'image'" in bad.error and bad.tasks == {}
    labels = Bundle.load(tiny_bundle).labels
    for p in predictions[:1] + predictions[2:]:
        assert p.error is None and list(p.tasks) == ["damage"] and p.label in labels
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
    predictor.backend.close()  # closing twice is harmless


@pytest.mark.parametrize("name", CONTRACT_BACKENDS)
def test_backend_refuses_a_precision_it_cannot_run_in_one_line(name: str, tiny_bundle: Path) -> None:
    _skip_unless_installed(name)
    with pytest.raises(CrisisToolError) as info:  # tiny_bundle holds fp32 graphs only
        create_backend(name, Bundle.load(tiny_bundle), precision="int8")
    message = str(info.value)
    assert "\n" not in message and "int8" in message


@pytest.mark.parametrize("name", CONTRACT_FORMATS)
def test_format_row_is_consistent(name: str) -> None:
    fmt = EXPORT_FORMATS[name]
    assert fmt.name == name and fmt.builds_from in (RUN_DIR, BUNDLE) and fmt.description
    assert fmt.takes <= {f.name for f in fields(ExportOptions)}


@pytest.mark.parametrize("name", CONTRACT_FORMATS)
def test_format_refuses_an_option_it_does_not_read(name: str, tmp_path: Path) -> None:
    fmt = EXPORT_FORMATS[name]
    source = {"model": tmp_path / "run", "out": tmp_path / "b"} if fmt.builds_from == RUN_DIR else {
        "from_bundle": tmp_path / "b", **({"out": tmp_path / "repo"} if fmt.writes_out else {})}
    check_request(ExportOptions(format=name, **source))  # the plain request is fine
    with pytest.raises(UsageError) as info:
        check_request(ExportOptions(format=name, **source, **CONTRACT_FORMATS[name]))
    (option,) = CONTRACT_FORMATS[name]
    assert f"--{option.replace('_', '-')}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", CONTRACT_FORMATS)
def test_format_refuses_the_wrong_source(name: str, tmp_path: Path) -> None:
    fmt = EXPORT_FORMATS[name]
    wrong = {"from_bundle": tmp_path / "b"} if fmt.builds_from == RUN_DIR else {"model": tmp_path / "run"}
    with pytest.raises(UsageError):
        check_request(ExportOptions(format=name, **wrong))


@pytest.mark.parametrize("name", CONTRACT_FORMATS)
def test_format_builds_where_its_needs_are_met(name: str, tiny_bundle: Path, tmp_path: Path) -> None:
    fmt = EXPORT_FORMATS[name]
    if "GPU" in fmt.needs:
        _skip_unless_installed("tensorrt")
    if fmt.builds_from == RUN_DIR:  # the tiny bundle fixture was built by this very format
        bundle = Bundle.load(tiny_bundle)
        assert bundle.manifest.graphs["fp32"] and bundle.spec.tasks == ("damage",)
        return
    from crisis_tool.export.formats import run_export

    out = tmp_path / "out" if fmt.writes_out else None
    source = Path(tiny_bundle) if fmt.writes_out else Path(__import__("shutil").copytree(tiny_bundle, tmp_path / "b"))
    result = run_export(ExportOptions(format=name, from_bundle=source, out=out))
    assert result.out.exists()
