"""The parity maths every gate uses (crisis_tool.runtime.parity), against hand-computed numbers: a difference
in either direction counts, every limit holds at its value and fails just past it, and an empty comparison
neither passes by accident nor crashes."""

from __future__ import annotations

import numpy as np
import pytest

from crisis_tool.runtime.model_spec import Tolerance
from crisis_tool.runtime.parity import (
    compare,
    judge,
    max_abs,
    min_cosine,
    passes,
    top1_agreement,
    top1_numbers,
    violations,
    wilson_interval,
)


def test_max_abs_counts_a_negative_difference() -> None:
    ref = np.array([[1.0, 2.0, 3.0]])
    assert max_abs(ref - [[0.0, 0.5, 0.0]], ref) == pytest.approx(0.5)  # got below the reference
    assert max_abs(ref + [[0.0, 0.0, 0.25]], ref) == pytest.approx(0.25)
    assert max_abs(np.array([[-3.0, 1.0]]), np.array([[1.0, 1.0]])) == pytest.approx(4.0)
    assert max_abs(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    with pytest.raises(ValueError, match=r"cannot compare shapes \(1, 3\) and \(1, 2\)"):
        max_abs(np.zeros((1, 3)), np.zeros((1, 2)))


def test_fp32_gate_fails_on_a_difference_below_the_reference() -> None:
    """The fp32 gate (max |diff| <= 1e-4, every top-1 equal): logits 0.5 BELOW the reference must fail."""
    ref = np.array([[2.0, -1.0], [0.5, 1.5]])
    numbers = compare([ref - 0.5], [ref], logits=True)
    assert numbers["max_abs"] == pytest.approx(0.5) and numbers["top1_agreement"] == 1.0
    entry = judge(numbers, Tolerance(max_abs=1e-4, min_top1=1.0))
    assert entry["passed"] is False and violations(entry) == ["max_abs 0.5 > 0.0001"]


def test_min_cosine_is_the_worst_row() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    assert min_cosine(a, b) == pytest.approx(1 / np.sqrt(2))
    assert min_cosine(a, -a) == pytest.approx(-1.0)
    assert min_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 0.0  # no division by zero


@pytest.mark.parametrize(("agree", "n", "lo", "hi"), [
    (10, 10, 0.72246, 1.0), (0, 10, 0.0, 0.27754), (67, 68, 0.92129, 0.99740), (5, 10, 0.23659, 0.76341),
    (1, 1, 0.20654, 1.0),
])
def test_wilson_interval_known_values(agree: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(agree, n)
    assert got == pytest.approx((lo, hi), abs=2e-4)


def test_wilson_interval_of_nothing_is_everything() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_top1_agreement_and_its_interval() -> None:
    ref = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]])
    got = np.array([[0.0, 1.0], [0.0, 1.0], [0.2, 0.8], [0.9, 0.1]])
    assert top1_agreement(got, ref) == 0.75
    assert top1_agreement(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    numbers = top1_numbers(got, ref)
    assert numbers["top1_agreement"] == 0.75 and numbers["top1_interval"] == wilson_interval(3, 4)
    assert top1_numbers(np.zeros((0, 2)), np.zeros((0, 2)))["top1_agreement"] == 0.0


def test_compare_concatenates_batches_and_adds_top1_only_for_logits() -> None:
    refs = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])]
    outs = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.75]])]
    numbers = compare(outs, refs, logits=False)
    assert numbers["n"] == 3 and numbers["max_abs"] == pytest.approx(0.25) and "top1_agreement" not in numbers
    assert numbers["min_cosine"] == pytest.approx(1.75 / (np.sqrt(2) * 1.25))
    logits = compare(outs, refs, logits=True)
    assert logits["top1_agreement"] == 1.0 and logits["top1_interval"] == wilson_interval(3, 3)


@pytest.mark.parametrize(("numbers", "tol", "passed"), [
    ({"max_abs": 1e-4}, Tolerance(max_abs=1e-4), True),  # at the limit: passes
    ({"max_abs": 1.0001e-4}, Tolerance(max_abs=1e-4), False),
    ({"max_abs": 0.5}, Tolerance(min_cosine=0.9), None),  # a limit the tolerance does not set is not checked
    ({"min_cosine": 0.999}, Tolerance(min_cosine=0.999), True),
    ({"min_cosine": 0.99899}, Tolerance(min_cosine=0.999), False),
    ({"top1_agreement": 0.99}, Tolerance(min_top1=0.99), True),
    ({"top1_agreement": 0.9899}, Tolerance(min_top1=0.99), False),
    ({"max_abs": 0.0, "min_cosine": 1.0, "top1_agreement": 0.5}, Tolerance(1e-4, 0.99, 1.0), False),
    ({"max_abs": 1.0, "min_cosine": 1.0, "top1_agreement": 1.0}, Tolerance(1e-4, 0.99, 1.0), False),
    ({"max_abs": 0.0, "min_cosine": 0.5, "top1_agreement": 1.0}, Tolerance(1e-4, 0.99, 1.0), False),
    ({"max_abs": 0.0, "min_cosine": 1.0, "top1_agreement": 1.0}, Tolerance(1e-4, 0.99, 1.0), True),
])
def test_each_limit_holds_at_its_value_and_fails_past_it(numbers: dict, tol: Tolerance, passed: bool | None) -> None:
    if passed is None:  # only min_cosine is limited and it is absent: a KeyError, not a silent pass
        with pytest.raises(KeyError):
            passes(numbers, tol)
        return
    assert passes(numbers, tol) is passed
    assert judge(numbers, tol)["passed"] is passed


def test_judge_rounds_and_records_the_limits() -> None:
    entry = judge({"max_abs": 1.234567891e-5, "top1_interval": (0.123456789, 1.0), "n": 7},
                  Tolerance(max_abs=1e-4))
    assert entry == {"max_abs": 1.23457e-05, "top1_interval": [0.123457, 1.0], "n": 7,
                     "limits": {"max_abs": 1e-4}, "passed": True}


def test_violations_name_each_broken_limit_only() -> None:
    entry = {"max_abs": 0.5, "min_cosine": 0.9, "top1_agreement": 0.98,
             "limits": {"max_abs": 1e-4, "min_cosine": 0.999, "min_top1": 0.99}}
    assert violations(entry) == ["max_abs 0.5 > 0.0001", "min_cosine 0.9 < 0.999",
                                 "top1_agreement 0.98 < 0.99"]
    at_limits = {"max_abs": 1e-4, "min_cosine": 0.999, "top1_agreement": 0.99, "limits": entry["limits"]}
    assert violations(at_limits) == []
    assert violations({"max_abs": 0.5, "limits": {"min_cosine": 0.999}}) == []
    assert violations({"max_abs": 0.5}) == []
