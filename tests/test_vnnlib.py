"""VNN-LIB reader on every supported construct, malformed files, and the writer round trip."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from maar_plugin.errors import MaarError
from maar_plugin.vnnlib import read_vnnlib, read_vnnlib_cases, write_robustness_vnnlib
from maar_plugin.vnnlib.writer import robustness_box

DECLARE_2X_3Y = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
"""
BOX = """(assert (<= X_0 0.5))
(assert (>= X_0 0.1))
(assert (>= 0.9 X_1))
(assert (<= -1.5e-1 X_1))
"""


def write(tmp_path: Path, text: str, name: str = "p.vnnlib") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(conjunction) -> list[tuple[list[float], float]]:
    return [(list(c), float(b)) for c, b in zip(conjunction.coefficients, conjunction.bounds)]


def test_box_with_both_operand_orders_and_scientific_notation(tmp_path):
    prop = read_vnnlib(write(tmp_path, DECLARE_2X_3Y + BOX + "(assert (<= Y_0 Y_1))\n"), 2, 3)
    np.testing.assert_array_equal(prop.input_lower, [0.1, -0.15])
    np.testing.assert_array_equal(prop.input_upper, [0.5, 0.9])
    assert prop.num_outputs == 3 and prop.num_inputs == 2
    assert len(prop.unsafe) == 1 and rows(prop.unsafe[0]) == [([1.0, -1.0, 0.0], 0.0)]


def test_comments_whitespace_and_multiline_formulas(tmp_path):
    text = """; VNN-LIB with comments everywhere
; image: 12
;   dataset :  mnist
(declare-const   X_0 Real) ; trailing comment
(declare-const X_1
   Real)
(declare-const Y_0 Real)(declare-const Y_1 Real)
\t(declare-const Y_2 Real)
(assert (<= X_0 5E-1))   (assert (>= X_0 1.0e-1))
(assert
   (<= X_1 0.9)) ; comment (with parentheses))
(assert (>= X_1 -0.15))
(assert (or
    ; comment inside a formula
    (and (>= Y_1 Y_0))
    (and (>= Y_2 Y_0) (<= Y_2 1.0))
))
"""
    prop = read_vnnlib(write(tmp_path, text))
    assert prop.comments == {"image": "12", "dataset": "mnist"}
    np.testing.assert_array_equal(prop.input_lower, [0.1, -0.15])
    np.testing.assert_array_equal(prop.input_upper, [0.5, 0.9])
    assert [rows(c) for c in prop.unsafe] == [
        [([1.0, -1.0, 0.0], 0.0)],
        [([1.0, 0.0, -1.0], 0.0), ([0.0, 0.0, 1.0], 1.0)],
    ]


def test_separate_output_asserts_are_conjoined_and_distributed(tmp_path):
    text = DECLARE_2X_3Y + BOX + """(assert (<= Y_0 3.5))
(assert (or (>= Y_1 Y_0) (> Y_2 Y_0)))
(assert (or (and (< Y_1 2)) (and (>= Y_2 -2))))
"""
    prop = read_vnnlib(write(tmp_path, text))
    got = sorted(sorted(rows(c)) for c in prop.unsafe)
    y0 = ([1.0, 0.0, 0.0], 3.5)
    a, b = ([1.0, -1.0, 0.0], 0.0), ([1.0, 0.0, -1.0], 0.0)
    c, d = ([0.0, 1.0, 0.0], 2.0), ([0.0, 0.0, -1.0], 2.0)
    assert got == sorted(sorted(r) for r in ([y0, a, c], [y0, a, d], [y0, b, c], [y0, b, d]))


def test_linear_terms_and_equality(tmp_path):
    text = DECLARE_2X_3Y + BOX + "(assert (<= (+ (* 2.0 Y_0) Y_1 (- Y_2) 1) (- 3 (* Y_1 0.5))))\n(assert (= Y_2 4))\n"
    prop = read_vnnlib(write(tmp_path, text))
    assert rows(prop.unsafe[0]) == [([2.0, 1.5, -1.0], 2.0), ([0.0, 0.0, 1.0], 4.0), ([0.0, 0.0, -1.0], -4.0)]


def test_tightest_bound_wins(tmp_path):
    text = DECLARE_2X_3Y + BOX + "(assert (<= X_0 0.3))\n(assert (<= X_0 0.4))\n(assert (<= Y_0 Y_1))\n"
    assert read_vnnlib(write(tmp_path, text)).input_upper[0] == 0.3


def test_disjunction_of_input_boxes_gives_cases(tmp_path):
    text = DECLARE_2X_3Y + """(assert (>= X_1 0.0))
(assert (<= X_1 1.0))
(assert (or (and (>= X_0 0.0) (<= X_0 0.5) (>= Y_1 Y_0))
            (and (>= X_0 0.5) (<= X_0 1.0) (>= Y_2 Y_0))
            (and (>= X_0 0.5) (<= X_0 1.0) (>= Y_1 Y_0))))
"""
    path = write(tmp_path, text)
    cases = read_vnnlib_cases(path)
    assert [list(c.input_upper) for c in cases] == [[0.5, 1.0], [1.0, 1.0]]
    assert [len(c.unsafe) for c in cases] == [1, 2]
    with pytest.raises(MaarError, match=r"p\.vnnlib:1: disjunction of 2 different input boxes"):
        read_vnnlib(path)


@pytest.mark.parametrize("body, line, reason", [
    (BOX + "(assert (<= Y_0 Y_1)", 10, "unbalanced parentheses"),
    (BOX + "(assert (<= Y_0 Y_1)))", 10, "unbalanced parentheses"),
    (BOX + "(assert (<= Y_0 Y_7))", 10, "unknown variable Y_7"),
    (BOX + "(assert (<= Z_0 1))", 10, "unknown variable or malformed number 'Z_0'"),
    (BOX + "(assert (<= Y_0 1.2.3))", 10, "malformed number '1.2.3'"),
    ("(assert (<= X_0 0.5))\n(assert (>= X_1 0.1))\n(assert (<= X_1 0.2))\n(assert (<= Y_0 Y_1))", 1,
     "X_0 has no finite lower bound"),
    (BOX + "(assert (>= X_0 0.7))\n(assert (<= Y_0 Y_1))", 10, "X_0 has lower bound 0.7 > upper bound 0.5"),
    (BOX + "(assert (<= (* Y_0 Y_1) 1))", 10, "product of variables"),
    (BOX + "(assert (<= (+ X_0 X_1) 1))", 10, "input constraint on several variables"),
    (BOX + "(assert (<= X_0 Y_1))", 10, "mixes inputs X and outputs Y"),
    (BOX + "(assert (not (<= Y_0 Y_1)))", 10, "unsupported construct 'not'"),
    (BOX + "(assert (<= (exp Y_0) 1))", 10, "unsupported construct 'exp'"),
    (BOX + "(define-fun f () Real 1)", 10, "unsupported command 'define-fun'"),
    (BOX + "(assert (<= Y_0))", 10, "needs exactly two operands"),
    (BOX + "(assert (<= 1 2))", 10, "comparison between constants"),
    (BOX + "(declare-const X_0 Real)", 10, "X_0 declared twice"),
    (BOX + "(declare-const X_3 Real)", 10, "X_2 is not declared"),
    (BOX + "(declare-const W Real)", 10, "not named X_i"),
    ("(assert (>= X_0 0))\n(assert (<= X_0 1e999))\n" + BOX[44:], 1, "X_0 has no finite upper bound"),
])
def test_malformed_files_report_file_and_line(tmp_path, body, line, reason):
    path = write(tmp_path, DECLARE_2X_3Y + body)
    with pytest.raises(MaarError) as error:
        read_vnnlib(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert reason in message, message
    assert "\n" not in message


def test_expected_sizes_are_checked(tmp_path):
    path = write(tmp_path, DECLARE_2X_3Y + BOX + "(assert (<= Y_0 Y_1))")
    with pytest.raises(MaarError, match=r":1: declares 2 inputs, the model has 784"):
        read_vnnlib(path, num_inputs=784)
    with pytest.raises(MaarError, match=r":1: declares 3 outputs, the model has 10"):
        read_vnnlib(path, num_outputs=10)


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(MaarError, match="cannot read VNN-LIB file"):
        read_vnnlib(tmp_path / "absent.vnnlib")


def test_writer_box_contains_the_exact_ball_and_is_float32():
    image = np.random.default_rng(0).random((3, 4, 4), dtype=np.float32)
    image[0, 0, 0], image[0, 0, 1] = 0.0, 1.0
    lower, upper = robustness_box(image, 0.1)
    flat = image.astype(np.float64).reshape(-1)
    assert lower.dtype == np.float32 and upper.dtype == np.float32
    assert np.all(lower <= np.clip(flat - 0.1, 0, 1)) and np.all(upper >= np.clip(flat + 0.1, 0, 1))
    assert np.all(lower >= 0) and np.all(upper <= 1) and lower[0] == 0 and upper[1] == 1
    assert np.all(upper - lower <= 0.2 + 1e-6)


@pytest.mark.parametrize("label", [0, 4, 9])
def test_writer_round_trip(tmp_path, label):
    image = np.random.default_rng(label).random((1, 28, 28), dtype=np.float32)
    path = tmp_path / "img.vnnlib"
    write_robustness_vnnlib(path, image, label, 0.3, 10, {"image": "5", "dataset": "mnist"})
    prop = read_vnnlib(path, num_inputs=784, num_outputs=10)
    lower, upper = robustness_box(image, 0.3)
    np.testing.assert_array_equal(prop.input_lower, lower.astype(np.float64))
    np.testing.assert_array_equal(prop.input_upper, upper.astype(np.float64))
    assert prop.comments["image"] == "5" and prop.comments["label"] == str(label) and prop.comments["eps"] == "0.3"
    # the unsafe region is exactly "some other logit >= the label's logit"
    logits = np.zeros(10)
    logits[label] = 1.0
    assert not prop.violated_by(logits)
    for other in range(10):
        if other != label:
            tied = logits.copy()
            tied[other] = 1.0
            assert prop.violated_by(tied)
    assert len(prop.unsafe) == 9 and not list(tmp_path.glob(".*tmp"))


def test_writer_matches_the_vnncomp_line_format(tmp_path):
    """alpha-beta-CROWN's reader matches statements with regexes; keep one statement per line."""
    path = tmp_path / "img.vnnlib"
    write_robustness_vnnlib(path, np.full((1, 2, 2), 0.5, np.float32), 1, 0.25, 3, {"note": "a\nb"})
    text = path.read_text()
    assert "; note: a b\n" in text
    assert re.search(r"^\(declare-const X_3 Real\)$", text, re.M)
    assert re.search(r"^\(assert \(>= X_0 0\.25\)\)$", text, re.M)
    assert re.search(r"^\(assert \(<= X_0 0\.75\)\)$", text, re.M)
    assert "(assert (or\n    (and (>= Y_0 Y_1))\n    (and (>= Y_2 Y_1))\n))" in text


def test_reader_is_fast_on_mnist_sized_files(tmp_path):
    path = tmp_path / "img.vnnlib"
    write_robustness_vnnlib(path, np.zeros((1, 28, 28), np.float32), 0, 0.1, 10, {})
    start = time.perf_counter()
    for _ in range(5):
        read_vnnlib(path)
    assert (time.perf_counter() - start) / 5 < 0.5
