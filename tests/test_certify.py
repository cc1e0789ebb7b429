"""`maar certify` and `maar demo`'s pieces: export + complete verification of a small real run."""
import json

import pytest
import torch
from click.testing import CliRunner

from maar_plugin.certification import accuracy_table, certify
from maar_plugin.cli import cli
from maar_plugin.data import load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.training.config import build_config
from maar_plugin.training.loop import train
from maar_plugin.training.run_files import load_trained_model, training_state

COUNT = 6
EPS = 0.005  # small enough for the bound stages to prove most of these instances quickly
TIMEOUT = 20


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mlp"
    config = build_config(None, dict(
        dataset="mnist", model="mlp-256x2", objective="ibp", eps=0.02, epochs=1, warmup_epochs=0, ramp_epochs=1,
        train_count=1024, eval_count=32, eval_crown_count=0, eval_pgd_steps=2, device="cpu", batch_size=128))
    train(config, run_dir, show_progress=False, log=lambda line: None)
    return run_dir


def test_certified_columns_are_ordered_and_clean_matches_torch(small_run, tmp_path):
    accuracy = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=TIMEOUT, progress=False)
    assert accuracy.count == COUNT
    assert accuracy.ibp <= accuracy.crown <= accuracy.alpha_crown <= accuracy.complete <= accuracy.pgd <= accuracy.clean
    assert accuracy.complete > 0
    assert accuracy.complete + 100.0 * (accuracy.falsified + accuracy.open) / COUNT == pytest.approx(100.0)
    model, _, _ = load_trained_model(small_run)
    images, labels = load_dataset("mnist", "test")
    with torch.no_grad():
        correct = (model(images[:COUNT]).argmax(1) == labels[:COUNT]).float().mean().item() * 100
    assert accuracy.clean == pytest.approx(correct)
    saved = json.loads((tmp_path / "cert" / "certified_accuracy.json").read_text())
    assert saved["complete"] == accuracy.complete
    assert "complete-cert." in accuracy_table([accuracy])


def test_certify_refuses_to_overwrite_and_resumes(small_run, tmp_path):
    first = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=TIMEOUT, progress=False)
    with pytest.raises(MaarError, match="--resume"):
        certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=TIMEOUT, progress=False)
    again = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=TIMEOUT, resume=True, progress=False)
    assert again == first


def test_certify_retry_open_decides_what_a_short_timeout_left_open(small_run, tmp_path):
    """With a timeout no stage fits in, every instance is open; resuming with --retry-open gives the same
    accuracies as a certification with the long timeout, and the certificate records the retry."""
    short = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=1e-6, progress=False)
    assert short.open == COUNT and short.retry_timeout is None
    retried = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=1e-6, resume=True, progress=False,
                      retry_open=TIMEOUT)
    direct = certify(small_run, EPS, COUNT, tmp_path / "direct", timeout=TIMEOUT, progress=False)
    assert retried.retry_timeout == TIMEOUT and retried.open == direct.open
    assert (retried.complete, retried.falsified) == (direct.complete, direct.falsified)


def test_certify_in_two_shard_processes_matches_one_process(small_run, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's share of a small CI runner, so that timeouts fall alike
    try:
        one = certify(small_run, EPS, COUNT, tmp_path / "one", timeout=TIMEOUT, progress=False)
    finally:
        torch.set_num_threads(threads)
    two = certify(small_run, EPS, COUNT, tmp_path / "two", timeout=TIMEOUT, progress=False, jobs=2)
    assert two == one
    verification = tmp_path / "two" / "verification"
    assert sorted(path.name for path in verification.glob("log*.jsonl")) == ["log.shard-0-of-2.jsonl",
                                                                            "log.shard-1-of-2.jsonl"]

    def verdicts(folder):
        return [line.split(",")[3] for line in (folder / "verification" / "summary.csv").read_text().splitlines()]

    assert verdicts(tmp_path / "two") == verdicts(tmp_path / "one")
    for jobs in (2, 1):  # a finished folder is read back, merged, by either split
        assert certify(small_run, EPS, COUNT, tmp_path / "two", timeout=TIMEOUT, resume=True, progress=False,
                       jobs=jobs) == one


def test_certify_an_onnx_file_needs_a_dataset(small_run, tmp_path):
    onnx_path = tmp_path / "cert" / "models" / "mlp.onnx"
    certified = certify(small_run, EPS, 3, tmp_path / "cert", timeout=TIMEOUT, progress=False)
    from_onnx = certify(onnx_path, EPS, 3, tmp_path / "again", timeout=TIMEOUT, dataset="mnist", progress=False)
    assert from_onnx.complete == certified.complete and from_onnx.clean == certified.clean
    with pytest.raises(MaarError, match="--dataset"):
        certify(onnx_path, EPS, 3, tmp_path / "third", progress=False)


@pytest.mark.parametrize("arguments, message", [
    (["/nonexistent/run", "--eps", "0.1"], "neither a training run"),
    (["RUN", "--eps", "0"], "--eps"),
    (["RUN", "--eps", "0.1", "--jobs", "0"], "--jobs"),
])
def test_cli_certify_bad_input_is_one_line(small_run, tmp_path, arguments, message):
    arguments = [str(small_run) if a == "RUN" else a for a in arguments]
    result = CliRunner().invoke(cli, ["certify", *arguments, "--out", str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_demotraining_state(small_run, tmp_path):
    assert training_state(tmp_path / "nothing", 1) == "new"
    assert training_state(small_run, 1) == "done"
    assert training_state(small_run, 2) == "partial"


def test_resuming_with_a_larger_count_verifies_only_the_new_images(small_run, tmp_path):
    """3 images, then 6: the first 3 log records stay as they were and only 3 more are verified; the
    result is that of certifying 6 at once, and going back to 3 reads them from the log."""
    from maar_plugin.certification import PER_IMAGE_NAME, read_per_image

    certify(small_run, EPS, 3, tmp_path / "cert", timeout=TIMEOUT, progress=False)
    log = tmp_path / "cert" / "verification" / "log.jsonl"
    first = log.read_text().splitlines()
    grown = certify(small_run, EPS, COUNT, tmp_path / "cert", timeout=TIMEOUT, resume=True, progress=False)
    records = log.read_text().splitlines()
    assert len(first) == 3 and len(records) == COUNT and records[:3] == first
    direct = certify(small_run, EPS, COUNT, tmp_path / "direct", timeout=TIMEOUT, progress=False)
    assert (grown.count, grown.complete, grown.falsified) == (direct.count, direct.complete, direct.falsified)
    per_image = read_per_image(tmp_path / "cert" / PER_IMAGE_NAME)
    assert [image.image for image in per_image] == list(range(COUNT))
    assert [image.verdict for image in per_image] == [json.loads(line)["verdict"] for line in records]
    assert all(image.timeout == TIMEOUT for image in per_image)
    shrunk = certify(small_run, EPS, 3, tmp_path / "cert", timeout=TIMEOUT, resume=True, progress=False)
    assert len(log.read_text().splitlines()) == COUNT and shrunk.count == 3
    assert [image.verdict for image in read_per_image(tmp_path / "cert" / PER_IMAGE_NAME)] == \
        [image.verdict for image in per_image[:3]]
