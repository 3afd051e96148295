"""Bit-identical outputs of the command line against goldens captured from earlier code.

``tests/golden/capture.py`` runs ``train.py``, ``test.py``, ``anomaly-clip calibrate`` and
``anomaly-clip predict`` for AnomalyCLIP and AA-CLIP on a tiny random backbone; the committed files
under ``tests/golden/data`` came from the code before the library was reshaped. Every score, map,
metric, threshold and trained weight must be exactly equal (a legitimate change of numbers
regenerates the goldens with the script, in the commit that explains it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import capture  # noqa: E402


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return capture.capture(output=tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("method", capture.METHODS)
def test_arrays_are_bit_identical(fresh, method):
    with np.load(GOLDEN / "data" / f"{method}.npz") as expected, np.load(fresh / f"{method}.npz") as actual:
        assert sorted(actual.files) == sorted(expected.files)
        different = [name for name in expected.files
                     if actual[name].dtype != expected[name].dtype or not np.array_equal(actual[name], expected[name])]
        assert different == [], f"{method}: outputs differ from the goldens: {different[:10]}"


@pytest.mark.parametrize("method", capture.METHODS)
def test_metrics_tables_thresholds_and_weights_are_identical(fresh, method):
    expected = json.loads((GOLDEN / "data" / f"{method}.json").read_text())
    actual = json.loads((fresh / f"{method}.json").read_text())
    for key in expected:
        assert actual[key] == expected[key], f"{method}: {key} differs from the goldens"
