"""`maar report` figures and page: cactus data, stage funnel, counterexample images, the self-contained HTML,
several folders side by side (verify folders and verifier comparisons)."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from helpers import write_tiny_benchmark, write_verify_folder
from maar_plugin.cli import cli
from maar_plugin.report import (
    ResultSource,
    aligned_rows,
    build_report,
    cactus_line,
    clean_input,
    counterexample_view,
    html_page,
    image_shape,
    plot_cactus,
    property_target,
    read_sources,
    stage_funnel,
)
from maar_plugin.report.funnel import FunnelStage
from maar_plugin.reproduce import PLAN_NAME
from maar_plugin.verification import STAGES, InstanceResult, instance_table
from maar_plugin.vnnlib import read_vnnlib, write_robustness_vnnlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE = np.array([[0.0, 0.0, 0.9, 1.0],
                  [0.0, 0.5, 0.6, 0.9],
                  [0.0, 0.4, 0.7, 0.8],
                  [0.1, 0.0, 0.3, 1.0]])
EPS, LABEL = 0.2, 0


def result(name: str, verdict: str, seconds: float, stages: dict[str, str] | None = None,
           **fields) -> InstanceResult:
    """A hand-made result; ``stages`` in cascade order, the deciding stage the first that is not open."""
    stages = stages or {}
    decided = next((stage for stage, state in stages.items() if state != "open"), None)
    return InstanceResult(name, "net.onnx", f"{name}.vnnlib", verdict, stage=decided, seconds=seconds,
                          stage_verdicts=stages, stage_seconds={stage: 0.01 for stage in stages}, timeout=10.0,
                          **fields)


def opened(*names: str) -> dict[str, str]:
    return {name: "open" for name in names}


# ---- cactus ---------------------------------------------------------------------------------------------------------

def test_cactus_line_sorts_the_times_of_decided_instances_only():
    results = [result("a", "unsat", 3.0), result("b", "timeout", 10.0), result("c", "sat", 0.5),
               result("d", "error", 0.1), result("e", "unsat", 1.25), result("f", "unknown", 2.0)]
    line = cactus_line("ours", results)
    assert line.times == (0.5, 1.25, 3.0)
    assert line.counts == (1, 2, 3)
    assert line.total == 6 and line.label == "ours"
    assert cactus_line("none", [result("x", "timeout", 10.0)]).times == ()
    assert plot_cactus([line, cactus_line("none", [])], timeout=10.0).startswith(PNG_MAGIC)


# ---- funnel ---------------------------------------------------------------------------------------------------------

def funnel_results() -> list[InstanceResult]:
    return [result("ibp", "unsat", 1, {"centre": "open", "IBP": "proved"}),
            result("pgd", "sat", 1, {**opened("centre", "IBP", "CROWN"), "pgd": "falsified"}),
            result("bab", "unsat", 1, {**opened("centre", "IBP", "CROWN", "pgd", "alpha-CROWN"), "BaB": "proved"}),
            result("crown", "unsat", 1, {**opened("centre", "IBP"), "CROWN": "proved"}),
            result("centre", "sat", 1, {"centre": "falsified"}),
            result("open", "timeout", 10, opened("centre", "IBP", "CROWN", "pgd", "alpha-CROWN", "BaB"))]


def test_stage_funnel_counts_entering_and_deciding_instances_per_stage():
    funnel = stage_funnel(funnel_results())
    assert funnel == [FunnelStage("centre", 6, 0, 1), FunnelStage("IBP", 5, 1, 0), FunnelStage("CROWN", 4, 1, 0),
                      FunnelStage("pgd", 3, 0, 1), FunnelStage("alpha-CROWN", 2, 0, 0), FunnelStage("BaB", 2, 1, 0)]
    assert [stage.passed_on for stage in funnel] == [5, 4, 3, 2, 2, 1]
    assert [stage.stage for stage in funnel] == [s for s in STAGES if s not in ("LP", "MILP")]  # never entered
    assert stage_funnel([result("abcrown", "unsat", 1, {"abcrown": "proved"})]) == []


# ---- counterexamples ------------------------------------------------------------------------------------------------

def mean_pixel_classifier() -> nn.Module:
    """1×4×4 images → 3 logits (mean pixel m, 0.4, 0.7 − m): class 0 for m > 0.4, 1 down to m = 0.3, then 2."""
    conv = nn.Conv2d(1, 1, 4)
    linear = nn.Linear(1, 3)
    with torch.no_grad():
        conv.weight.fill_(1 / 16)
        conv.bias.zero_()
        linear.weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
        linear.bias.copy_(torch.tensor([0.0, 0.4, 0.7]))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear).eval()


@pytest.fixture
def image_instance(tmp_path: Path) -> tuple[nn.Module, Path, Path, np.ndarray]:
    """An ONNX image classifier, a robustness property of IMAGE written as `maar export` does, and a point of
    its box that the model classifies otherwise (every pixel lowered by ε, clipped at 0)."""
    model = mean_pixel_classifier()
    onnx_path = tmp_path / "images.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 4, 4), str(onnx_path), input_names=["input"], dynamo=False)
    vnnlib_path = tmp_path / "img0.vnnlib"
    write_robustness_vnnlib(vnnlib_path, IMAGE, LABEL, EPS, 3, {"dataset": "test"})
    prop = read_vnnlib(vnnlib_path)
    adversarial = np.clip(IMAGE.reshape(-1) - EPS, prop.input_lower, prop.input_upper)
    return model, onnx_path, vnnlib_path, adversarial


def torch_label(model: nn.Module, flat: np.ndarray) -> int:
    with torch.no_grad():
        return int(model(torch.tensor(flat, dtype=torch.float32).reshape(1, 1, 4, 4)).argmax())


def test_counterexample_view_shows_the_box_centre_the_assignment_and_both_labels(image_instance):
    model, onnx_path, vnnlib_path, adversarial = image_instance
    clean_label, adversarial_label = torch_label(model, IMAGE.reshape(-1)), torch_label(model, adversarial)
    assert clean_label != adversarial_label  # else the test could not tell the two points apart
    sat = InstanceResult("img0", str(onnx_path), str(vnnlib_path), "sat", counterexample=(adversarial, np.zeros(3)))
    view = counterexample_view(sat)
    assert view.clean.shape == view.adversarial.shape == (1, 4, 4)
    np.testing.assert_allclose(view.clean[0], IMAGE, atol=1e-6)  # the image, also where its ε-box was clipped
    np.testing.assert_array_equal(view.adversarial.reshape(-1), adversarial)
    np.testing.assert_allclose(view.difference.reshape(-1), adversarial - IMAGE.reshape(-1), atol=1e-6)
    assert (view.clean_prediction, view.adversarial_prediction, view.target) == (clean_label, adversarial_label, LABEL)


def test_clean_input_is_the_box_centre_without_an_eps_header(image_instance, tmp_path):
    """Without the export's header, the clean point is the box centre and the target comes from the unsafe
    region (the class every case compares the others against)."""
    _, _, vnnlib_path, _ = image_instance
    bare = tmp_path / "bare.vnnlib"
    bare.write_text("".join(line + "\n" for line in vnnlib_path.read_text().splitlines() if not line.startswith(";")))
    prop = read_vnnlib(bare)
    assert prop.comments == {}
    np.testing.assert_array_equal(clean_input(prop), (prop.input_lower + prop.input_upper) / 2)
    assert property_target(prop) == LABEL
    with_header = read_vnnlib(vnnlib_path)
    inside = (IMAGE.reshape(-1) >= EPS) & (IMAGE.reshape(-1) <= 1 - EPS)  # unclipped pixels: the centre, too
    np.testing.assert_allclose(clean_input(with_header)[inside], IMAGE.reshape(-1)[inside], atol=1e-6)


def test_image_shape_recognises_images_and_skips_other_inputs(tmp_path):
    assert image_shape([1, 1, 28, 28]) == (1, 28, 28)
    assert image_shape([1, 3, 32, 32]) == (3, 32, 32)
    assert image_shape([1, 28, 28]) == (1, 28, 28)
    assert image_shape([1, 784]) is None and image_shape([1, 5, 1]) is None and image_shape([1, 8, 4, 4]) is None
    specs = write_tiny_benchmark(tmp_path)  # a 3-input network: not an image
    flat = InstanceResult("x", str(tmp_path / "models" / "net.onnx"), str(specs / "always.vnnlib"), "sat",
                          counterexample=(np.full(3, 0.25), np.zeros(2)))
    assert counterexample_view(flat) is None


def test_counterexamples_of_a_missing_model_are_left_out_with_one_note(image_instance):
    adversarial = image_instance[3]
    missing = [InstanceResult(f"img{i}", "gone/images.onnx", "img.vnnlib", "sat",
                              counterexample=(adversarial, np.zeros(3))) for i in range(2)]
    report = build_report([ResultSource("ours", missing, Path("."))])
    assert report.counterexamples == []
    assert report.notes == ["ours: 2 sat instances not drawn: ONNX file 'gone/images.onnx' not found (a relative path "
                            "as the verify run recorded it: run the report in the folder the verification ran in)"]


# ---- folders --------------------------------------------------------------------------------------------------------

def image_folders(tmp_path: Path, image_instance) -> tuple[Path, Path]:
    """Two verify folders on the same three instances; they contradict each other on `img0`. The first
    records ONNX / VNN-LIB paths relative to its parent folder (as a run started there would)."""
    _, onnx_path, vnnlib_path, adversarial = image_instance
    ours = [InstanceResult("img0", onnx_path.name, vnnlib_path.name, "sat", "pgd", 0.4,
                           stage_verdicts={"centre": "open", "IBP": "open", "pgd": "falsified"}, timeout=10.0,
                           counterexample=(adversarial, np.array([0.25, 0.5, 0.75]))),
            result("img1", "unsat", 0.2, {"centre": "open", "IBP": "proved"}),
            result("img2", "timeout", 10.0, opened("centre", "IBP", "pgd"))]
    theirs = [result("img0", "unsat", 2.0, {"abcrown": "proved"}), result("img1", "unsat", 1.5, {"abcrown": "proved"}),
              result("img2", "sat", 3.0, {"abcrown": "falsified"})]
    return write_verify_folder(tmp_path / "ours", ours), write_verify_folder(tmp_path / "theirs", theirs)


def test_verify_folders_are_read_with_their_counterexamples(tmp_path, image_instance):
    ours, theirs = image_folders(tmp_path, image_instance)
    sources = read_sources([ours, theirs])
    assert [source.label for source in sources] == ["ours", "theirs"]
    assert [source.has_stages for source in sources] == [True, False]
    img0 = sources[0].results[0]
    np.testing.assert_array_equal(img0.counterexample[0], image_instance[3])  # parsed from results/img0.txt
    np.testing.assert_array_equal(img0.counterexample[1], [0.25, 0.5, 0.75])
    assert Path(img0.onnx).is_file() and Path(img0.vnnlib).is_file()      # found beside the folder
    assert sources[1].results[2].counterexample is None                     # sat without an assignment
    rows = aligned_rows(sources)
    assert [(row.instance, row.contradiction) for row in rows] == [("img0", True), ("img1", False), ("img2", False)]
    certified = tmp_path / "certified"
    shutil.copytree(theirs, certified / "verification")  # `maar certify --out certified` verifies in there
    (source,) = read_sources([certified])
    assert source.label == "certified" and [r.verdict for r in source.results] == ["unsat", "unsat", "sat"]


def write_comparison(folder: Path, rows: list[dict], as_csv: bool = False) -> Path:
    folder.mkdir()
    if as_csv:
        keys = list(rows[0])
        lines = [",".join(keys)] + [",".join("" if row[k] is None else str(row[k]) for k in keys) for row in rows]
        (folder / "comparison.csv").write_text("\n".join(lines) + "\n")
    else:
        (folder / "comparison.json").write_text(json.dumps(rows))
    return folder


def comparison_row(instance: str, maar: tuple, abcrown: tuple) -> dict:
    row = {"instance": instance, "timeout": 60.0}
    for name, (verdict, wall, own, stage) in (("maar", maar), ("abcrown", abcrown)):
        row.update({f"{name}_verdict": verdict, f"{name}_wall_s": wall, f"{name}_own_s": own,
                    f"{name}_peak_mb": 900.0, f"{name}_stage": stage, f"{name}_message": ""})
    return row


@pytest.mark.parametrize("as_csv", [False, True])
def test_a_comparison_folder_is_two_sources_timed_by_each_verifiers_own_time(tmp_path, as_csv):
    rows = [comparison_row("p0", ("unsat", 8.0, 0.5, "CROWN"), ("unsat", 9.0, 0.08, None)),
            comparison_row("p1", ("sat", 7.9, 0.2, "pgd"), ("killed", 120.0, None, None))]
    sources = read_sources([write_comparison(tmp_path / "cmp", rows, as_csv)])
    assert [source.label for source in sources] == ["cmp maar", "cmp abcrown"]
    ours, theirs = sources
    assert [(r.instance, r.verdict, r.stage, r.seconds) for r in ours.results] == [("p0", "unsat", "CROWN", 0.5),
                                                                                   ("p1", "sat", "pgd", 0.2)]
    assert [(r.verdict, r.seconds) for r in theirs.results] == [("unsat", 0.08), ("killed", 120.0)]  # wall if no own
    assert cactus_line(theirs.label, theirs.results).times == (0.08,)


def test_a_comparison_folder_takes_kept_runs_and_counterexamples_from_its_subfolders(tmp_path, image_instance):
    """Where the comparison kept its runs, ours come with their stages from maar/<instance>/ and both
    counterexamples from the result files; α,β-CROWN's files from the config it ran with."""
    _, onnx_path, vnnlib_path, adversarial = image_instance
    folder = write_comparison(tmp_path / "cmp", [comparison_row("img0", ("sat", 8.0, 0.4, "pgd"),
                                                                ("sat", 9.0, 0.6, None))])
    write_verify_folder(folder / "maar" / "img0", [InstanceResult(
        "img0", str(onnx_path), str(vnnlib_path), "sat", "pgd", 0.4,
        stage_verdicts={"centre": "open", "pgd": "falsified"}, counterexample=(adversarial, np.zeros(3)))])
    (folder / "abcrown").mkdir()
    (folder / "abcrown" / "img0.yaml").write_text(json.dumps({"model": {"onnx_path": str(onnx_path)},
                                                             "specification": {"vnnlib_path": str(vnnlib_path)}}))
    theirs_x = np.clip(adversarial + 0.05, 0, 1)
    (folder / "abcrown" / "img0.txt").write_text(InstanceResult(
        "img0", "", "", "sat", counterexample=(theirs_x, np.zeros(3))).vnncomp_text())
    ours, theirs = read_sources([folder])
    assert ours.has_stages and not theirs.has_stages
    assert (ours.results[0].seconds, theirs.results[0].seconds) == (0.4, 0.6)
    np.testing.assert_array_equal(ours.results[0].counterexample[0], adversarial)
    np.testing.assert_array_equal(theirs.results[0].counterexample[0], theirs_x)
    assert theirs.results[0].onnx == str(onnx_path) and theirs.results[0].vnnlib == str(vnnlib_path)
    report = build_report([ours, theirs])
    assert [figure.name for figure in report.counterexamples] == ["cex-cmp_maar-img0.png", "cex-cmp_abcrown-img0.png"]


# ---- the page -------------------------------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(|@import|<link|https?://""", re.IGNORECASE)


def test_html_page_is_self_contained_with_every_section_figure_and_row(tmp_path, image_instance):
    sources = read_sources(list(image_folders(tmp_path, image_instance)))
    report = build_report(sources)
    assert [figure.name for figure in report.counterexamples] == ["cex-ours-img0.png"]
    assert any("theirs: 1 sat instances not drawn: no result file" in note for note in report.notes)
    page = html_page(report)
    for section in ("summary", "cactus", "funnel", "instances", "counterexamples"):
        assert f'<section id="{section}">' in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # cactus, funnel, one counterexample
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert EXTERNAL.search(page) is None
    body = page.split('<table class="sortable" id="instance-table">')[1].split("</table>")[0]
    assert body.count("<tr") == 4  # header + 3 instances
    assert re.search(r'<tr class="contradiction"><td data-sort="1">1</td><td class="name">img0</td>', body)
    assert '<th>ours verdict</th><th>ours s</th><th>theirs verdict</th><th>theirs s</th>' in body
    assert "1 sat-vs-unsat contradiction(s)" in page
    capped = build_report(sources, max_counterexamples=0)
    assert capped.counterexamples == [] and "ours: 1 sat instances not drawn: over the limit of 0 figures per source" \
        in capped.notes


def test_the_margin_bracket_shows_in_the_instance_table_and_the_page(tmp_path):
    """An open instance's bracket ``[lower, upper]``, an unknown end as ``?``, and none where nothing is known."""
    results = [result("open", "timeout", 10.0, opened("IBP", "BaB"), margin_lower=-0.30831, margin_upper=2.48025),
               result("centre", "sat", 0.01, {"centre": "falsified"}, margin_upper=-0.5),
               result("bad", "error", 0.0)]
    lines = {line.split()[0]: line for line in instance_table(results).splitlines()[2:]}
    assert "[-0.308, 2.48]" in lines["open"] and "[?, -0.5]" in lines["centre"]
    assert "[" not in lines["bad"]
    page = html_page(build_report([ResultSource("ours", results, tmp_path)]))
    assert 'title="margin [-0.308, 2.48]"' in page and 'title="stage centre margin [?, -0.5]"' in page


def test_report_cli_over_two_folders_writes_figures_and_page(tmp_path, image_instance):
    ours, theirs = image_folders(tmp_path, image_instance)
    out, page = tmp_path / "figures", tmp_path / "page.html"
    run = CliRunner().invoke(cli, ["report", str(ours), str(theirs), "--out", str(out), "--html", str(page),
                                   "--per-instance"])
    assert run.exit_code == 0, run.output
    assert sorted(path.name for path in out.iterdir()) == ["cactus.png", "cex-ours-img0.png", "funnel.png"]
    assert "img0" in run.output and "CONTRADICTION" in run.output
    assert "contradictions (sat vs unsat): 1 (img0)" in run.output
    assert page.read_text().startswith("<!DOCTYPE html>")

    alone = CliRunner().invoke(cli, ["report", str(ours), "--instances"])  # the old name of --per-instance
    assert alone.exit_code == 0, alone.output
    assert sorted(path.name for path in (ours / "report").iterdir()) == ["cactus.png", "cex-img0.png", "funnel.png"]
    assert "verdicts  unsat: 1  sat: 1" in alone.output and "img2" in alone.output


def test_report_cli_refuses_unreadable_folders_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    run = CliRunner().invoke(cli, ["report", str(tmp_path / "empty")])
    assert run.exit_code == 1 and "no log.jsonl records" in run.output and "Traceback" not in run.output
    (tmp_path / "reproduced").mkdir()
    (tmp_path / "reproduced" / PLAN_NAME).write_text("{}")
    run = CliRunner().invoke(cli, ["report", str(tmp_path / "reproduced"), str(tmp_path / "empty")])
    assert run.exit_code == 1 and "reported on its own" in run.output
    write_comparison(tmp_path / "bad", [{"instance": "p0", "maar_verdict": "sat"}])
    run = CliRunner().invoke(cli, ["report", str(tmp_path / "bad")])
    assert run.exit_code == 1 and "comparison rows need the columns" in run.output


# ---- the page in a browser ------------------------------------------------------------------------------------------

def chromium_binary() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


SORT_BY_OURS_SECONDS = """<script>
document.querySelectorAll("#instance-table thead th")[3].click();
document.title = Array.prototype.map.call(document.querySelectorAll("#instance-table tbody tr"),
                                          function (row) { return row.cells[1].textContent; }).join(",");
</script></body>"""


@pytest.mark.slow
def test_page_renders_in_headless_chromium_without_console_errors(tmp_path, image_instance):
    browser = chromium_binary()
    if browser is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    page = tmp_path / "page.html"
    run = CliRunner().invoke(cli, ["report", *map(str, image_folders(tmp_path, image_instance)), "--html", str(page)])
    assert run.exit_code == 0, run.output
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    shown = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert [line for line in shown.stderr.splitlines() if ":CONSOLE" in line] == []
    assert len(re.findall(r'<img src="data:image/png;base64,', shown.stdout)) == 3
    assert 'aria-sort="' not in shown.stdout  # nothing sorted until a header is clicked

    sorting = tmp_path / "sorting.html"
    sorting.write_text(page.read_text().replace("</body>", SORT_BY_OURS_SECONDS, 1))
    sorted_dom = subprocess.run([*flags, "--dump-dom", sorting.as_uri()], capture_output=True, text=True, timeout=120)
    assert [line for line in sorted_dom.stderr.splitlines() if ":CONSOLE" in line] == []
    assert "<title>img1,img0,img2</title>" in sorted_dom.stdout  # ours: 0.2 s, 0.4 s, 10 s
    assert 'aria-sort="ascending"' in sorted_dom.stdout

    screenshot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1280,2400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert screenshot.read_bytes().startswith(PNG_MAGIC) and screenshot.stat().st_size > 20_000
