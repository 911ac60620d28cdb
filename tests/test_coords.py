"""Coordinates as text: round trips within the format's quantisation and rejection of malformed output."""
import math

import numpy as np
import pytest

from lmlab.data.coords import (FORMATS, box_iou, format_box, format_point, normalise_box, parse_box,
                               parse_point, round_trip_tolerance)

SIZE = (640, 200)


def test_hand_worked_texts():
    box = (0.1234, 0.5, 0.999, 1.0)
    assert format_box(box, "float2") == "[0.12, 0.50, 1.00, 1.00]"
    assert format_box(box, "bins100") == "[12, 50, 99, 99]"
    assert format_box(box, "bins1000") == "[123, 500, 999, 999]"
    assert format_box(box, "pixels", SIZE) == "[79, 100, 639, 200]"
    assert format_point((0.25, 0.75), "bins100") == "[25, 75]"
    assert format_point((0.25, 0.75), "pixels", SIZE) == "[160, 150]"
    assert parse_box("[12, 50, 99, 99]", "bins100") == pytest.approx((0.125, 0.505, 0.995, 0.995))
    assert parse_box("[79, 100, 639, 200]", "pixels", SIZE) == pytest.approx((79 / 640, 0.5, 639 / 640, 1.0))
    assert parse_point("[0.25, 0.75]", "float2") == (0.25, 0.75)


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_and_point_round_trip_within_tolerance(fmt):
    rng = np.random.default_rng(0)
    size = SIZE if fmt == "pixels" else None
    tx, ty = round_trip_tolerance(fmt, size)
    for _ in range(500):
        x = np.sort(rng.uniform(0, 1, 2))
        y = np.sort(rng.uniform(0, 1, 2))
        box = (x[0], y[0], x[1], y[1])
        got = parse_box(format_box(box, fmt, size), fmt, size)
        assert got is not None
        err = np.abs(np.subtract(got, box))
        assert err[0] <= tx + 1e-12 and err[2] <= tx + 1e-12, (fmt, box, got)
        assert err[1] <= ty + 1e-12 and err[3] <= ty + 1e-12, (fmt, box, got)
        p = parse_point(format_point((x[0], y[1]), fmt, size), fmt, size)
        assert abs(p[0] - x[0]) <= tx + 1e-12 and abs(p[1] - y[1]) <= ty + 1e-12
    # edges: 0 and 1 survive, and formatting is idempotent after one round trip
    for box in [(0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5)]:
        t = format_box(box, fmt, size)
        assert format_box(parse_box(t, fmt, size), fmt, size) == t


def test_text_around_the_box_is_ignored():
    assert parse_box("The cat is at [12, 50, 60, 90].", "bins100") == pytest.approx((0.125, 0.505, 0.605, 0.905))
    assert parse_box("[ 0.1 ,0.2, 0.3,0.4 ]<eos>", "float2") == (0.1, 0.2, 0.3, 0.4)


@pytest.mark.parametrize("fmt,text", [
    ("float2", ""), ("float2", "no box here"), ("float2", "[0.1, 0.2, 0.3]"), ("float2", "[0.1, 0.2, 0.3, 0.4, 0.5]"),
    ("float2", "[0.1, 0.2, 0.3, 1.5]"), ("float2", "[-0.1, 0.2, 0.3, 0.4]"), ("float2", "[0.1, nan, 0.3, 0.4]"),
    ("float2", "[0.1, inf, 0.3, 0.4]"), ("float2", "[1e-1, 0.2, 0.3, 0.4]"), ("float2", "[0.5, 0.2, 0.3, 0.4]"),
    ("float2", "[0.1, 0.5, 0.3, 0.4]"), ("float2", "[0.1, , 0.3, 0.4]"), ("float2", "[0.1 0.2 0.3 0.4]"),
    ("float2", "0.1, 0.2, 0.3, 0.4"), ("float2", "[0.1, 0.2, 0.3, 0.4"), ("float2", "[cat, 0.2, 0.3, 0.4]"),
    ("bins100", "[10, 20, 30, 100]"), ("bins100", "[10, 20, 30.5, 40]"), ("bins100", "[10, 20, +30, 40]"),
    ("bins100", "[0.1, 0.2, 0.3, 0.4]"), ("bins1000", "[10, 20, 30, 1000]"), ("bins1000", "[50, 20, 30, 40]"),
    ("pixels", "[0, 0, 641, 10]"), ("pixels", "[0, 0, 10, 201]"), ("pixels", "[0.5, 0, 10, 20]"),
    ("bins100", "[１２, 20, 30, 40]"), ("float2", "[0.1, 0.2, 0.3, ٠.4]"),
])
def test_malformed_box_output_is_rejected(fmt, text):
    size = SIZE if fmt == "pixels" else None
    assert parse_box(text, fmt, size) is None


@pytest.mark.parametrize("bad", [None, 12, b"[1, 2, 3, 4]", ["[1, 2, 3, 4]"]])
def test_non_string_output_is_rejected_without_raising(bad):
    assert parse_box(bad, "bins100") is None and parse_point(bad, "bins100") is None


def test_malformed_point_output_is_rejected():
    assert parse_point("[10, 20, 30]", "bins100") is None
    assert parse_point("[10]", "bins100") is None
    assert parse_point("[100, 20]", "bins100") is None
    assert parse_point("[0.2, 1.01]", "float2") is None


def test_caller_errors_raise_one_line_value_errors():
    with pytest.raises(ValueError, match="unknown format 'bins10'"):
        format_box((0, 0, 1, 1), "bins10")
    with pytest.raises(ValueError, match="unknown format"):
        parse_box("[1, 2, 3, 4]", "ints")
    with pytest.raises(ValueError, match="needs size"):
        format_box((0, 0, 1, 1), "pixels")
    with pytest.raises(ValueError, match="needs size"):
        parse_point("[1, 2]", "pixels")
    with pytest.raises(ValueError, match="4 values"):
        format_box((0, 0, 1), "float2")


def test_iou_and_normalise():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert normalise_box((32, 50, 64, 100), (64, 200)) == (0.5, 0.25, 1.0, 0.5)
    # IoU after a bins1000 round trip of a 10%-wide box stays near 1
    box = (0.3, 0.3, 0.4, 0.45)
    assert box_iou(box, parse_box(format_box(box, "bins1000"), "bins1000")) > 0.98
    assert not math.isnan(box_iou((0.1, 0.1, 0.1, 0.2), (0.1, 0.1, 0.1, 0.2)))
