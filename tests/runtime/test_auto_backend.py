"""`--backend auto`: fake backends in the registry, a deterministic probe clock. The choice follows the
measurement, never a configuration the gates refuse (export validation, parity to fp32, batch invariance), the
choice is cached per bundle and machine, and the chosen backend runs behind `AutoBackend`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crisis_tool.runtime import backends
from crisis_tool.runtime.backends import Backend, auto, create_backend, register_backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class Fake(Backend):
    """Row-independent embeddings from pooled pixels and token ids; each call costs `cost` s per record on the
    fake clock. Subclasses change the cost, couple the batch or break parity."""

    name = "fake"
    provider = "fake-cpu"
    cost = 1.0
    coupling = 0.0
    noise = 0.0
    loads = 0

    def __init__(self, bundle: Bundle, precision: str | None = None) -> None:
        self.precision = precision or "fp32"
        self.d, self.c = bundle.dims["D"], bundle.dims.get("C", 3)  # C: per head in multi-task bundles
        rng = np.random.default_rng(0)
        self.wi = rng.normal(size=(3, self.d))
        self.wt = rng.normal(size=(1, self.d))
        self.wh = rng.normal(size=(2 * self.d, self.c))
        type(self).loads += 1

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        CLOCK.now += self.cost * len(pixels)
        out = pixels.reshape(len(pixels), 3, -1).mean(axis=2) @ self.wi + 1.0
        out = out - self.coupling * out.mean(axis=0, keepdims=True)
        if self.noise:
            out = out + self.noise * np.random.default_rng(len(pixels)).normal(size=out.shape)
        return out.astype(np.float32)

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        return ((ids % 97).sum(axis=1, keepdims=True) / (97.0 * 77) @ self.wt + 1.0).astype(np.float32)

    def run_head(self, image: np.ndarray, text: np.ndarray, task: str | None = None):
        logits = np.concatenate([image, text], axis=1) @ self.wh / self.d
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits.astype(np.float32), (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fake(name: str, **attrs) -> type[Fake]:
    return type(name, (Fake,), {"name": name, "loads": 0, **attrs})


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """Only fakes (and auto) registered; the user cache in tmp_path; the fake clock."""
    monkeypatch.setattr(backends.registry, "REGISTRY", {})
    monkeypatch.setattr(backends.registry, "_entry_points_loaded", True)
    register_backend("auto", auto.AutoBackend, precisions=("fp32",))
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "_clock", CLOCK)

    def add(name: str, precisions=("fp32",), **attrs) -> type[Fake]:
        cls = fake(name, **attrs)
        register_backend(name, cls, precisions=precisions)
        return cls

    return add


@pytest.fixture
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


def test_choice_follows_the_measurement(registry, bundle):
    registry("slow", cost=5.0)
    registry("quick", cost=1.0)
    choice = auto.choose(bundle)
    assert (choice.backend, choice.precision, choice.cached) == ("quick", "fp32", False)
    assert choice.probes["slow fp32"]["posts_per_s"] < choice.probes["quick fp32"]["posts_per_s"]
    assert choice.posts_per_s == choice.probes["quick fp32"]["posts_per_s"]
    assert "backend auto: quick fp32" in choice.line() and "fastest of 2 verified" in choice.line()


def test_swapped_costs_swap_the_choice(registry, bundle):
    registry("slow", cost=1.0)
    registry("quick", cost=5.0)
    assert auto.choose(bundle).backend == "slow"


def test_a_faster_but_batch_coupled_backend_is_refused(registry, bundle):
    registry("honest", cost=3.0)
    registry("coupled", cost=1.0, coupling=0.5)
    choice = auto.choose(bundle)
    assert choice.backend == "honest"
    coupled = choice.probes["coupled fp32"]
    assert coupled["passed"] is False and "batch invariance" in coupled["why"]


def test_a_faster_backend_that_disagrees_with_fp32_is_refused(registry, bundle):
    registry("reference", cost=3.0)
    registry("sloppy", cost=1.0, noise=0.5)  # embeddings off by noise: cosine to the fp32 reference drops
    choice = auto.choose(bundle)
    assert choice.backend == "reference" and "parity to fp32" in choice.probes["sloppy fp32"]["why"]


def test_a_precision_the_export_gate_refused_is_skipped(registry, bundle):
    registry("engine", precisions=("fp32", "int8"), cost=3.0)
    refused = Bundle(bundle.root, dataclasses.replace(bundle.manifest, validated={"fp32": True, "int8": False}))
    choice = auto.choose(refused)
    assert choice.precision == "fp32" and "did not validate" in choice.probes["engine int8"]["why"]
    coupled = {"fp32": True, "int8": True}
    parity = {"int8": {"image_encoder": {"batch_invariant": False}}}
    marked = Bundle(bundle.root, dataclasses.replace(bundle.manifest, validated=coupled, parity=parity))
    assert "not batch-invariant" in auto.gate_refusal(marked, "int8")


def test_unavailable_backends_are_skipped_with_their_reason(registry, bundle):
    registry("absent", unavailable_reason=classmethod(lambda cls: "no such engine here"), cost=0.1)
    registry("present", cost=2.0)
    choice = auto.choose(bundle)
    assert choice.backend == "present" and choice.probes["absent"] == {"passed": False, "why": "no such engine here"}


def test_the_choice_is_cached_per_bundle_and_machine(registry, bundle, monkeypatch, tmp_path):
    quick = registry("quick", cost=1.0)
    first = auto.choose(bundle)
    path = auto.cache_path(bundle, auto.machine_info(None))
    assert path is not None and path.parent == tmp_path / "cache" / "auto" and str(path) == first.cache_file
    assert json.loads(path.read_text())["backend"] == "quick"
    loads = quick.loads
    monkeypatch.setattr(auto, "probe", lambda *a, **k: pytest.fail("probed again despite the cache"))
    again = auto.choose(bundle)
    assert again.cached and again.backend == "quick" and "cached probe" in again.line() and quick.loads == loads
    other_threads = auto.cache_path(bundle, auto.machine_info(3))
    assert other_threads != path  # another machine key: another entry


def test_a_damaged_cache_entry_is_probed_again(registry, bundle):
    registry("quick", cost=1.0)
    path = auto.cache_path(bundle, auto.machine_info(None))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    choice = auto.choose(bundle)
    assert not choice.cached and json.loads(path.read_text())["backend"] == "quick"


def test_cache_off_writes_nothing(registry, bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("CRISIS_TOOL_CACHE_DIR", "off")
    registry("quick", cost=1.0)
    assert auto.choose(bundle).cache_file is None and not (tmp_path / "cache").exists()


def test_auto_backend_delegates_to_the_choice(registry, bundle):
    registry("slow", cost=5.0)
    registry("quick", cost=1.0)
    backend = create_backend("auto", bundle)
    assert isinstance(backend, auto.AutoBackend) and backend.inner.name == "quick"
    assert backend.describe().startswith("auto -> quick") and backend.provider == "fake-cpu via quick"
    pixels = np.zeros((2, 3, 4, 4), dtype=np.float32)
    assert np.array_equal(backend.encode_image(pixels), backend.inner.encode_image(pixels))
    assert backend.choice.to_dict()["backend"] == "quick"


def test_precision_restricts_and_options_are_refused(registry, bundle):
    registry("engine", precisions=("fp32", "int8"), cost=3.0)
    registry("int8only", precisions=("fp32", "int8"), cost=9.0)
    both = Bundle(bundle.root, dataclasses.replace(bundle.manifest, validated={"fp32": True, "int8": True}))
    assert auto.choose(both, precision="int8").precision == "int8"
    with pytest.raises(UsageError, match="does not take --device"):
        create_backend("auto", both, device="GPU")


def test_nothing_passing_is_one_line_error(registry, bundle):
    registry("coupled", coupling=0.5)
    with pytest.raises(UsageError, match="no configuration passed") as err:
        auto.choose(bundle)
    assert "\n" not in str(err.value)
