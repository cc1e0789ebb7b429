"""`maar reproduce` + `maar report` on a tiny recipe: layout, resumption, the table's numbers against the
files they come from, MAAR's paired effect, and one-line errors."""
import json
import shutil
import statistics

import pytest
import torch
from click.testing import CliRunner

from maar_plugin.cli import cli
from maar_plugin.data import load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.reproduce import (
    collect_results,
    markdown_report,
    paired_effects,
    parse_row,
    parse_rows,
    parse_seeds,
    read_plan,
    reproduce,
    summary_rows,
)
from maar_plugin.reproduce.run import run_config
from maar_plugin.reproduce.table import maar_base, statistic, table_order
from maar_plugin.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from maar_plugin.training.loop import train
from maar_plugin.training.recipe import load_recipe

TINY_RECIPE = """\
setting: tiny
description: a recipe small enough for unit tests
sources: [none]
training: {dataset: mnist, model: mlp-256x2, eps: 0.02, epochs: 2, warmup_epochs: 0, ramp_epochs: 1,
           train_count: 256, batch_size: 128, eval_count: 32, eval_crown_count: 0, eval_pgd_steps: 2, lr: 1.0e-3,
           objective: maar, objective_args: {base: ibp, lam: 0.5}}
evaluation: {count: 64, crown_count: 8, pgd_steps: 3, pgd_restarts: 1, certify_count: 3, certify_timeout: 5}
"""
ROWS = ["ibp", "maar-ibp", "maar-ibp:lam=2:weighting=soft"]
SEEDS = [0, 1]


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="module")
def grid(recipe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "out"
    reproduce(str(recipe_file), ROWS, SEEDS, out, device="cpu", progress=False, log=quiet)
    return out


def test_rows_and_seeds_parse_and_reject_bad_input():
    row = parse_row("maar-ibp:lam=0.25:weighting=soft")
    assert row.objective == "maar-ibp" and row.objective_args == {"lam": 0.25, "weighting": "soft"}
    assert row.run_name(2) == "maar-ibp_lam=0.25_weighting=soft-s2"
    assert [r.label for r in parse_rows("ibp, maar-ibp:lam=1")] == ["ibp", "maar-ibp:lam=1"]
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("nope", "ibp:lam=1", "maar-ibp:lam", ":lam=1"):
        with pytest.raises(MaarError):
            parse_row(bad)
    for bad in ("ibp,ibp", ""):
        with pytest.raises(MaarError):
            parse_rows(bad)
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(MaarError):
            parse_seeds(bad)


def test_maar_rows_know_their_base_and_sort_beside_it():
    assert maar_base("maar-ibp:lam=0") == "ibp" and maar_base("maar-crown-ibp") == "crown-ibp"
    assert maar_base("maar") == "crown-ibp" and maar_base("maar:base=ibp") == "ibp" and maar_base("ibp") is None
    labels = ["maar-crown-ibp", "maar-ibp", "crown-ibp", "pgd", "ibp", "natural", "maar-ibp:lam=0"]
    assert table_order(labels) == ["natural", "pgd", "ibp", "maar-ibp", "maar-ibp:lam=0", "crown-ibp", "maar-crown-ibp"]


def test_rows_take_a_training_radius_that_pairs_and_sorts_with_its_base(recipe_file):
    row = parse_row("maar-exp-ibp:weighting=soft:train_eps=0.2")
    assert row.objective_args == {"weighting": "soft"} and row.training_args == {"train_eps": 0.2}
    assert maar_base(row.label) == "exp-ibp:train_eps=0.2"
    config = run_config(load_recipe(str(recipe_file)), parse_row("ibp:train_eps=0.04"), 0, "cpu")
    assert config.train_eps == 0.04 and config.eps == 0.02 and "train_eps" not in config.objective_args
    labels = ["maar-ibp:train_eps=0.04", "ibp:train_eps=0.04", "maar-ibp", "ibp", "pgd"]
    assert table_order(labels) == ["pgd", "ibp", "maar-ibp", "ibp:train_eps=0.04", "maar-ibp:train_eps=0.04"]
    for bad in ("ibp:train_eps=0", "ibp:train_eps=1.5", "ibp:train_eps=wide", "ibp:train_eps=true"):
        with pytest.raises(MaarError, match="train_eps"):
            parse_row(bad)


def test_statistic_is_mean_and_sample_standard_deviation():
    values = [91.2, 93.5, 92.0]
    stat = statistic(values)
    assert stat.mean == pytest.approx(statistics.mean(values))
    assert stat.spread == pytest.approx(statistics.stdev(values))
    assert statistic([5.0]).spread == 0 and statistic([]) is None


def test_grid_layout_and_configs(grid, recipe_file):
    plan = read_plan(grid)
    assert plan.rows == tuple(ROWS) and plan.seeds == tuple(SEEDS)
    recipe = load_recipe(str(recipe_file))
    for label in ROWS:
        for seed in SEEDS:
            name = parse_row(label).run_name(seed)
            config = json.loads((grid / "runs" / name / "config.json").read_text())
            assert config == run_config(recipe, parse_row(label), seed, "cpu").to_dict()
            assert (grid / "runs" / name / "evaluation.json").is_file()
            assert (grid / "certify" / name / "certified_accuracy.json").is_file()
    soft = json.loads((grid / "runs" / "maar-ibp_lam=2_weighting=soft-s1" / "config.json").read_text())
    assert soft["objective_args"] == {"lam": 2, "weighting": "soft"} and soft["seed"] == 1


def test_table_numbers_come_from_the_run_files(grid):
    results = collect_results(grid)
    assert len(results) == len(ROWS) * len(SEEDS)
    for result in results:
        name = parse_row(result.row).run_name(result.seed)
        evaluation = json.loads((grid / "runs" / name / "evaluation.json").read_text())
        log_path = grid / "certify" / name / "verification" / "log.jsonl"
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert result.metrics["ibp_verified"] == evaluation["ibp_verified"]
        assert result.metrics["complete"] == pytest.approx(100 * sum(r["verdict"] == "unsat" for r in log) / len(log))
        assert result.open == sum(r["verdict"] not in ("sat", "unsat") for r in log)
        assert result.train_minutes > 0 and result.hardware.startswith("CPU")
    summary = {row["row"]: row for row in summary_rows(results)}
    ibp_values = [r.metrics["clean"] for r in results if r.row == "ibp"]
    assert summary["ibp"]["clean"].mean == pytest.approx(statistics.mean(ibp_values))
    effects = {effect["row"]: effect for effect in paired_effects(results)}
    assert set(effects) == {"maar-ibp", "maar-ibp:lam=2:weighting=soft"}
    by_key = {(r.row, r.seed): r for r in results}
    differences = [by_key[("maar-ibp", s)].metrics["pgd"] - by_key[("ibp", s)].metrics["pgd"] for s in SEEDS]
    assert effects["maar-ibp"]["pgd"].mean == pytest.approx(statistics.mean(differences))
    markdown = markdown_report(grid)
    for label in ROWS:
        assert f"| {label} | 0,1 |" in markdown
    assert "MAAR minus its base" in markdown


def test_rerun_skips_finished_work_and_extends_the_grid(grid, recipe_file):
    checkpoint = grid / "runs" / "ibp-s0" / CHECKPOINT_NAME
    before = checkpoint.stat().st_mtime_ns
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0, 2], grid, device="cpu", progress=False, log=lines.append)
    assert checkpoint.stat().st_mtime_ns == before
    assert not any(line.startswith("ibp-s0:") for line in lines)  # nothing to do for it
    assert any(line.startswith("ibp-s2: training") for line in lines)
    plan = read_plan(grid)
    assert plan.rows == tuple(ROWS) and plan.seeds == (0, 1, 2)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(recipe_file, tmp_path, grid):
    recipe = load_recipe(str(recipe_file))
    out = tmp_path / "out"
    run_dir = out / "runs" / "ibp-s0"

    def stop_after_first_epoch(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run_config(recipe, parse_row("ibp"), 0, "cpu"), run_dir, show_progress=False, log=stop_after_first_epoch)
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["epoch"] == 0
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=quiet)
    resumed = load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]
    uninterrupted = load_checkpoint(grid / "runs" / "ibp-s0" / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)


def test_a_run_stopped_before_its_first_epoch_starts_again(recipe_file, tmp_path, grid):
    recipe = load_recipe(str(recipe_file))
    out = tmp_path / "out"
    run_dir = out / "runs" / "ibp-s0"
    run_dir.mkdir(parents=True)  # what a run killed during its first epoch leaves: its config, no checkpoint
    (run_dir / "config.json").write_text(json.dumps(run_config(recipe, parse_row("ibp"), 0, "cpu").to_dict()))
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append)
    assert any("stopped before its first epoch" in line for line in lines)
    trained = load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]
    uninterrupted = load_checkpoint(grid / "runs" / "ibp-s0" / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(trained[key], uninterrupted[key]) for key in uninterrupted)


def test_a_folder_keeps_its_recipe_and_its_trained_options(grid, recipe_file, tmp_path):
    with pytest.raises(MaarError, match="holds recipe"):
        reproduce("mnist-eps0.1-dm-small", ["ibp"], [0], grid, scale="cpu", progress=False, log=quiet)
    changed = tmp_path / "tiny.yaml"  # same recipe name, another learning rate
    changed.write_text(recipe_file.read_text().replace("lr: 1.0e-3", "lr: 2.0e-3"))
    with pytest.raises(MaarError, match=r"other options \(lr\)"):
        reproduce(str(changed), ["ibp"], [0], grid, device="cpu", progress=False, log=quiet)


def test_cli_report_writes_markdown_and_png(grid):
    result = CliRunner().invoke(cli, ["report", str(grid)])
    assert result.exit_code == 0, result.output
    assert "| maar-ibp:lam=2:weighting=soft |" in result.output
    assert (grid / "table.md").read_text() == markdown_report(grid)
    assert (grid / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reproduce_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    for arguments, message in (
        (["mnist-eps0.2", "--scale", "cpu"], "unknown recipe"),
        (["mnist-eps0.1", "--objectives", "ibp,magic"], "unknown objective"),
        (["mnist-eps0.1", "--seeds", "a"], "--seeds"),
        (["mnist-eps0.1", "--jobs", "0"], "--jobs"),
    ):
        result = runner.invoke(cli, ["reproduce", *arguments, "--out", str(tmp_path / "o"), "--no-progress"])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


def test_parallel_jobs_finish_every_run(recipe_file, tmp_path):
    out = tmp_path / "parallel"
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0, 1], out, jobs=2, device="cpu", progress=False, log=lines.append)
    assert sorted(line.split("] ")[1].split(":")[0] for line in lines if line.startswith("[")) == ["ibp-s0", "ibp-s1"]
    assert all(result.metrics.keys() == {"clean", "pgd", "ibp_verified", "crown_verified", "complete"}
               for result in collect_results(out))
    for run in ("ibp-s0", "ibp-s1"):  # each certified in two shard processes
        logs = (out / "certify" / run / "verification").glob("log*.jsonl")
        assert sorted(path.name for path in logs) == ["log.shard-0-of-2.jsonl", "log.shard-1-of-2.jsonl"]


def test_report_of_some_rows(grid):
    markdown = markdown_report(grid, ["maar-ibp", "ibp"])
    assert "| ibp | 0,1" in markdown and "| maar-ibp | 0,1" in markdown and "weighting=soft" not in markdown
    result = CliRunner().invoke(cli, ["report", str(grid), "--objectives", "crown-ibp"])
    assert result.exit_code == 1 and "has no row(s) crown-ibp" in result.output


def test_packed_results_report_the_same_table_and_keep_usable_weights(grid, tmp_path):
    import importlib.util
    from pathlib import Path

    from maar_plugin.training.run_files import load_trained_model

    script = Path(__file__).parent.parent / "benchmarks" / "pack_reproduce.py"
    spec = importlib.util.spec_from_file_location("pack_reproduce", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    packed, light = tmp_path / "packed", tmp_path / "light"
    module.pack(grid, packed)
    module.pack(grid, light, light=True)
    assert markdown_report(packed) == markdown_report(grid) == markdown_report(light)
    assert not list(light.rglob("checkpoint.pt"))
    original, _, _ = load_trained_model(grid / "runs" / "ibp-s0")
    slim, _, epoch = load_trained_model(packed / "runs" / "ibp-s0")
    assert epoch == 1
    x = load_dataset("mnist", "test")[0][:16]
    assert torch.allclose(original(x), slim(x), atol=1e-2)  # float16 weights


def test_caption_names_the_complete_verifier(grid, tmp_path):
    assert "complete-certified (`maar verify`, " in markdown_report(grid)
    copy = tmp_path / "grid"
    shutil.copytree(grid, copy)
    for path in copy.glob("certify/*/certified_accuracy.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "verifier": "abcrown"}))
    assert "complete-certified (α,β-CROWN, `--verifier abcrown`, " in markdown_report(copy)


def test_caption_and_open_column_give_the_retry_timeouts_of_the_certificates(grid, tmp_path):
    assert "open ones again" not in markdown_report(grid)        # the tiny recipe retries nothing
    copy = tmp_path / "grid"
    shutil.copytree(grid, copy)
    paths = sorted(copy.glob("certify/*/certified_accuracy.json"))
    for path in paths:
        retry = 60 if "ibp-s" in path.parent.name and "maar" not in path.parent.name else 20
        path.write_text(json.dumps({**json.loads(path.read_text()), "retry_timeout": retry}))
    report = markdown_report(copy)
    assert "open ones again with 20 or 60 s as the *open* column says" in report
    assert "(again with 60 s)" in report.split("| ibp |")[1].splitlines()[0]
    assert "(again with 20 s)" in report.split("| maar-ibp |")[1].splitlines()[0]


def test_reproduce_retry_open_override_is_checked(recipe_file, tmp_path):
    with pytest.raises(MaarError, match="--retry-open"):
        reproduce(str(recipe_file), ["ibp"], [0], tmp_path / "out", device="cpu", progress=False, log=quiet,
                  retry_open=-1)


def copy_runs(grid, out, names):
    """A reproduce folder holding copies of some of the grid's runs (trained and evaluated) and certifications."""
    out.mkdir()
    shutil.copy2(grid / "reproduce.json", out / "reproduce.json")
    for name in names:
        shutil.copytree(grid / "runs" / name, out / "runs" / name)
        if (grid / "certify" / name).is_dir():
            shutil.copytree(grid / "certify" / name, out / "certify" / name)
    return out


def test_a_larger_certify_count_extends_the_certification_and_keeps_its_verified_images(grid, recipe_file, tmp_path):
    out = copy_runs(grid, tmp_path / "out", ["ibp-s0"])
    log = out / "certify" / "ibp-s0" / "verification" / "log.jsonl"
    before = log.read_text().splitlines()
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append, certify_count=5)
    assert "ibp-s0: complete verification of 5 test images (extending the 3 certified)" in lines
    assert not any("training" in line or "evaluating" in line for line in lines)
    after = log.read_text().splitlines()
    assert len(after) == 5 and after[:3] == before
    assert len((out / "certify" / "ibp-s0" / "per_image.csv").read_text().splitlines()) == 1 + 5
    assert read_plan(out).evaluation["certify_count"] == 5
    assert "on the first 5;" in markdown_report(out)
    lines.clear()
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append)
    assert "ibp-s0: complete verification of 3 test images (the first 3 of the 5 certified)" in lines
    assert log.read_text().splitlines() == after
    assert json.loads((out / "certify" / "ibp-s0" / "certified_accuracy.json").read_text())["count"] == 3


def test_a_longer_first_pass_verifies_the_instances_a_shorter_one_left_open(grid, recipe_file, tmp_path):
    out = copy_runs(grid, tmp_path / "out", ["ibp-s0"])
    shutil.rmtree(out / "certify")
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=quiet, certify_timeout=1e-6)
    certificate = out / "certify" / "ibp-s0" / "certified_accuracy.json"
    assert json.loads(certificate.read_text())["open"] == 3         # no stage fits in a microsecond
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append, certify_timeout=5)
    assert "ibp-s0: complete verification of 3 test images, open ones again with 5 s" in lines
    assert json.loads(certificate.read_text())["complete"] == \
        json.loads((grid / "certify" / "ibp-s0" / "certified_accuracy.json").read_text())["complete"]
    lines.clear()
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append, certify_timeout=5)
    assert not any(line.startswith("ibp-s0: complete verification") for line in lines)
    with pytest.raises(MaarError, match="--certify-timeout"):
        reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=quiet, certify_timeout=0)
    with pytest.raises(MaarError, match="--certify-count"):
        reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=quiet, certify_count=0)


def test_a_rerun_adds_the_per_image_records_that_earlier_versions_did_not_write(grid, recipe_file, tmp_path):
    out = copy_runs(grid, tmp_path / "out", ["ibp-s0", "maar-ibp-s0"])
    evaluation, per_image = out / "runs" / "ibp-s0" / "evaluation.json", out / "certify" / "ibp-s0" / "per_image.csv"
    written = json.loads(evaluation.read_text()), per_image.read_text()
    evaluation.write_text(json.dumps({key: value for key, value in written[0].items() if key != "misclassified"}))
    per_image.unlink()
    assert "Without per-image records (ibp seed 0)" in markdown_report(out)
    log = out / "certify" / "ibp-s0" / "verification" / "log.jsonl"
    records = log.read_text()
    lines = []
    reproduce(str(recipe_file), ["ibp"], [0], out, device="cpu", progress=False, log=lines.append)
    assert "ibp-s0: misclassified test images added to evaluation.json" in lines
    assert json.loads(evaluation.read_text())["misclassified"] == written[0]["misclassified"]
    assert per_image.read_text() == written[1] and log.read_text() == records  # nothing verified again
    assert "Without per-image records" not in markdown_report(out)


def test_evaluation_records_misclassified_images_and_writes_the_report_file_only_with_its_settings(grid, tmp_path):
    from maar_plugin.training.evaluate_run import evaluate_run
    from maar_plugin.training.run_files import load_trained_model

    out = copy_runs(grid, tmp_path / "out", ["ibp-s0"])
    run = out / "runs" / "ibp-s0"
    report_file = (run / "evaluation.json").read_text()
    results, path = evaluate_run(run, count=10, pgd_steps=2, pgd_restarts=1, crown_count=0)
    assert path == run / "evaluation-eps0.02-n10.json" and (run / "evaluation.json").read_text() == report_file
    model, _, _ = load_trained_model(run)
    images, labels = load_dataset("mnist", "test")
    with torch.no_grad():
        wrong = (model(images[:10]).argmax(1) != labels[:10]).nonzero().flatten().tolist()
    assert json.loads(path.read_text())["misclassified"] == wrong
    assert results["clean"] == pytest.approx(100 * (10 - len(wrong)) / 10)
    settings = read_plan(out).evaluation
    _, path = evaluate_run(run, count=settings["count"], pgd_steps=settings["pgd_steps"],
                           pgd_restarts=settings["pgd_restarts"], crown_count=settings["crown_count"])
    assert path == run / "evaluation.json"
    _, path = evaluate_run(run, eps=0.01, count=settings["count"], pgd_steps=settings["pgd_steps"],
                           pgd_restarts=settings["pgd_restarts"], crown_count=settings["crown_count"])
    assert path.name == f"evaluation-eps0.01-n{settings['count']}.json"


def test_validation_evaluates_held_out_training_images_and_refuses_runs_that_trained_on_them(grid, tmp_path):
    from maar_plugin.training.config import TrainConfig
    from maar_plugin.training.evaluate_run import evaluation_images
    from maar_plugin.training.run_files import load_trained_model

    out = copy_runs(grid, tmp_path / "out", ["ibp-s0"])
    run = out / "runs" / "ibp-s0"
    report_file = (run / "evaluation.json").read_text()
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--split", "validation", "--count", "20",
                                      "--pgd-steps", "1", "--pgd-restarts", "1", "--crown-count", "5"])
    assert result.exit_code == 0, result.output
    path = run / "evaluation-validation-eps0.02-n20.json"
    assert f"written: {path} (not the file" in result.output
    assert (run / "evaluation.json").read_text() == report_file
    saved = json.loads(path.read_text())
    model, _, _ = load_trained_model(run)
    images, labels = load_dataset("mnist", "train")
    with torch.no_grad():
        wrong = (model(images[55000:55020]).argmax(1) != labels[55000:55020]).nonzero().flatten().tolist()
    assert (saved["split"], saved["first_image"], saved["misclassified"]) == ("validation", 55000, wrong)
    _, _, first = evaluation_images(TrainConfig(train_count=55000), "validation")
    assert first == 55000
    for train_count in (None, 55001):
        with pytest.raises(MaarError, match="not held out"):
            evaluation_images(TrainConfig(train_count=train_count), "validation")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "train_count": None}))
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--split", "validation"])
    assert result.exit_code == 1 and "trained on all training images" in result.output
    assert "Traceback" not in result.output
