"""MAAR against its base paired by seed and image: McNemar's exact test and the paired bootstrap against
exact answers, and `maar report` end to end on a small reproduce folder written here."""
import json
import time
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from maar_plugin.certification import PER_IMAGE_COLUMNS
from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.reproduce import markdown_report
from maar_plugin.reproduce.stats import bootstrap_interval, mcnemar_exact, paired_test


@pytest.mark.parametrize("b, c, exact", [
    (1, 5, Fraction(2 * (1 + 6), 2**6)),                 # 2 (C(6,0) + C(6,1)) / 2^6
    (0, 6, Fraction(2, 2**6)),
    (7, 2, Fraction(2 * (1 + 9 + 36), 2**9)),
    (0, 0, Fraction(1)),
    (3, 3, Fraction(1)),                                  # 2 P(X ≤ 3) = 84/64, capped at 1
    (10, 0, Fraction(2, 2**10)),
])
def test_mcnemar_exact_matches_the_binomial_tail_by_hand(b, c, exact):
    assert mcnemar_exact(b, c) == pytest.approx(float(exact), rel=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_mcnemar_exact_agrees_with_scipy_on_large_counts():
    from scipy.stats import binomtest

    for b, c in ((40, 61), (480, 530), (3, 120)):
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    with pytest.raises(MaarError):
        mcnemar_exact(-1, 3)


def synthetic_pair(rng, seeds, images, base_accuracy, gain):
    """Base right with ``base_accuracy``; treated right where the base is, plus a ``gain`` share of the rest."""
    base = rng.random((seeds, images)) < base_accuracy
    treated = base | (rng.random((seeds, images)) < gain / (1 - base_accuracy))
    return treated, base


def test_bootstrap_interval_holds_the_true_difference_and_excludes_zero_for_a_strong_effect():
    rng = np.random.default_rng(0)
    treated, base = synthetic_pair(rng, 3, 1000, 0.90, 0.02)   # true difference: 2 points
    result = paired_test(treated, base)
    assert result.low < 2.0 < result.high
    assert result.difference == pytest.approx(100 * (treated.mean() - base.mean()))
    strong = paired_test(*synthetic_pair(rng, 3, 1000, 0.80, 0.10))
    assert strong.low > 5 and strong.interval_excludes_zero and strong.test_rejects
    weak = paired_test(*synthetic_pair(rng, 3, 100, 0.90, 0.0))
    assert not weak.interval_excludes_zero


def test_identical_rows_give_zero_and_a_degenerate_interval():
    base = np.random.default_rng(1).random((3, 200)) < 0.7
    result = paired_test(base.copy(), base)
    assert (result.difference, result.low, result.high, result.b, result.c, result.p_value) == (0, 0, 0, 0, 0, 1)
    assert not result.interval_excludes_zero and not result.test_rejects


def test_bootstrap_of_a_constant_difference_is_that_difference():
    treated, base = np.ones((2, 50), bool), np.zeros((2, 50), bool)
    assert bootstrap_interval(treated, base) == (100.0, 100.0)


def test_bootstrap_is_seeded_and_matches_resampling_the_image_indices():
    """The multinomial shortcut against the literal two-level bootstrap: draw seeds, then image indices."""
    rng = np.random.default_rng(2)
    treated, base = synthetic_pair(rng, 3, 300, 0.85, 0.03)
    treated[2] = base[2]                                  # one seed without an effect widens the interval
    assert bootstrap_interval(treated, base, seed=5) == bootstrap_interval(treated, base, seed=5)
    difference = treated.astype(int) - base.astype(int)
    draws = np.random.default_rng(3)
    seeds = draws.integers(0, 3, size=(20_000, 3))
    images = draws.integers(0, 300, size=(20_000, 3, 300))
    literal = 100 * difference[seeds[..., None], images].mean(axis=(1, 2))
    expected = np.percentile(literal, [2.5, 97.5])
    assert np.allclose(bootstrap_interval(treated, base), expected, atol=0.2)


def test_bootstrap_takes_well_under_a_second_and_refuses_unpaired_shapes():
    rng = np.random.default_rng(4)
    treated, base = synthetic_pair(rng, 5, 10_000, 0.9, 0.01)
    started = time.perf_counter()
    paired_test(treated, base)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(MaarError, match="paired"):
        paired_test(treated, base[:, :10])


# A reproduce folder as `maar reproduce` leaves it, written directly: rows × seeds with evaluation.json and
# certify/<run>/{certified_accuracy.json, per_image.csv}.
ROWS = ["ibp", "maar-ibp", "sabr", "maar-sabr"]
SEEDS = [0, 1, 2]
EVALUATED, CERTIFIED = 400, 200


def write_run(out, row, seed, clean_correct, verdicts):
    name = f"{row}-s{seed}"
    run = out / "runs" / name
    run.mkdir(parents=True)
    misclassified = np.flatnonzero(~clean_correct).tolist()
    (run / "evaluation.json").write_text(json.dumps({
        "eps": 0.1, "count": len(clean_correct), "clean": 100 * clean_correct.mean(), "pgd": 50.0,
        "ibp_verified": 40.0, "crown_verified": 45.0, "misclassified": misclassified}))
    certify = out / "certify" / name
    certify.mkdir(parents=True)
    verdicts = list(verdicts)
    open_count = sum(v not in ("sat", "unsat") for v in verdicts)
    (certify / "certified_accuracy.json").write_text(json.dumps({
        "name": name, "eps": 0.1, "count": len(verdicts), "complete": 100 * verdicts.count("unsat") / len(verdicts),
        "falsified": verdicts.count("sat"), "open": open_count, "verifier": "maar"}))
    lines = [",".join(PER_IMAGE_COLUMNS)] + [f"{i},{v},IBP,0.010,5.0" for i, v in enumerate(verdicts)]
    (certify / "per_image.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "out")


def write_folder(out):
    """maar-ibp certifies 30 more images than ibp per seed (and misclassifies none more); maar-sabr is sabr."""
    out.mkdir()
    (out / "reproduce.json").write_text(json.dumps({
        "recipe": "synthetic", "scale": "cpu", "rows": ROWS, "seeds": SEEDS, "device": "cpu",
        "evaluation": {"count": EVALUATED, "crown_count": 100, "pgd_steps": 5, "pgd_restarts": 1,
                       "certify_count": CERTIFIED, "certify_timeout": 5, "certify_retry_timeout": None}}))
    rng = np.random.default_rng(0)
    for seed in SEEDS:
        clean = rng.random(EVALUATED) < 0.9
        verdicts = np.where(rng.random(CERTIFIED) < 0.6, "unsat", "sat").astype(object)
        verdicts[:2] = "timeout"
        maar = verdicts.copy()
        maar[np.flatnonzero(verdicts == "sat")[:30]] = "unsat"
        write_run(out, "ibp", seed, clean, verdicts)
        write_run(out, "maar-ibp", seed, clean, maar)
        write_run(out, "sabr", seed, clean, verdicts)
        write_run(out, "maar-sabr", seed, clean, verdicts)
    return out


def by_image_row(report, row):
    section = report.split("paired by seed and image")[1]
    return next(line for line in section.splitlines() if line.startswith(f"| {row} |"))


def test_report_pairs_by_image_and_marks_what_is_significant(folder):
    report = markdown_report(folder)
    cells = [cell.strip() for cell in by_image_row(report, "maar-ibp").split("|")[1:-1]]
    (row, base, clean_n, clean_d, clean_bc, clean_p, cert_n, cert_d, cert_bc, cert_p, opens, open_range) = cells
    assert (row, base, clean_n, cert_n) == ("maar-ibp", "ibp", f"3 × {EVALUATED}", f"3 × {CERTIFIED}")
    assert clean_d == "+0.00 [+0.00, +0.00]" and clean_bc == "0 / 0" and clean_p == "1.000"
    assert cert_d.startswith("**+15.00 [") and cert_bc == "90 / 0"             # 30 images × 3 seeds
    assert cert_p == f"**{mcnemar_exact(90, 0):.1e}**"
    assert opens == "6 / 6"
    assert open_range == f"[{15 - 100 * 6 / 600:+.2f}, {15 + 100 * 6 / 600:+.2f}]"
    sabr = [cell.strip() for cell in by_image_row(report, "maar-sabr").split("|")[1:-1]]
    assert sabr[7] == "+0.00 [+0.00, +0.00]" and sabr[8] == "0 / 0"
    assert "Significant by both criteria (interval excludes 0, p < 0.05): maar-ibp over ibp, complete-certified " \
           "+15.00 points" in report
    assert "maar-sabr over sabr" not in report.split("Significant by both")[1]
    assert "Without per-image records" not in report
    per_seed = report.split("paired by seed (")[1].split("paired by seed and image")[0]
    assert "| maar-ibp | ibp |" in per_seed and per_seed.split("| maar-ibp | ibp |")[1].splitlines()[0].endswith(
        "| 6 / 6 |")                                                            # open counts beside the difference


def test_report_without_per_image_records_says_why_and_keeps_the_per_seed_table(folder):
    for path in folder.glob("certify/*/per_image.csv"):
        path.unlink()
    for path in folder.glob("runs/*/evaluation.json"):
        data = json.loads(path.read_text())
        del data["misclassified"]
        path.write_text(json.dumps(data))
    report = markdown_report(folder)
    assert "MAAR minus its base, paired by seed (" in report
    assert "| Δ clean |" not in report
    assert "Without per-image records (maar-ibp seed 0, maar-ibp seed 1, maar-ibp seed 2, ibp seed 0" in report
    assert "only the per-seed statistics above are given" in report


def test_report_compares_the_seeds_that_have_records(folder):
    (folder / "certify" / "ibp-s2" / "per_image.csv").unlink()
    report = markdown_report(folder)
    cells = [cell.strip() for cell in by_image_row(report, "maar-ibp").split("|")[1:-1]]
    assert cells[2] == f"3 × {EVALUATED}" and cells[6] == f"2 × {CERTIFIED}" and cells[8] == "60 / 0"
    assert "Without per-image records (ibp seed 2)" in report


def test_cli_report_writes_the_paired_table(folder):
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "| Δ complete-certified |" in (folder / "table.md").read_text()


def test_caption_and_open_column_give_the_certified_counts_where_runs_differ(folder):
    path = folder / "certify" / "ibp-s0" / "certified_accuracy.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "count": 100}))
    report = markdown_report(folder)
    assert "on the first 100 or 200 (the runs differ" in report
    assert "| 6 (of 100/200 images per seed) |" in report.split("| ibp | 0,1,2 |")[1].splitlines()[0]
