"""α,β-CROWN as the verifier (``--verifier abcrown``): its output read into our results, counterexamples
re-checked, crashes and overruns survived, resume. A stand-in ``abcrown.py`` written here prints what
α,β-CROWN prints (``complete_verifier/abcrown.py``, ``utils.Logger``) and writes its counterexample files;
the real one runs where ``MAAR_ABCROWN`` names a checkout (``MAAR_ABCROWN_PYTHON``: its interpreter)."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from helpers import write_tiny_benchmark
from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.verification import read_log, verify_instances
from maar_plugin.verification.abcrown.backend import AbcrownVerifier, run_config
from maar_plugin.verification.abcrown.output import Banner, Outcome, parse_assignment, parse_line, verdict_of
from maar_plugin.verification.run.batch import Instance

# Lines as α,β-CROWN 8250d5f prints them (abcrown.py main loop, utils.Logger.summarize_results).
BANNER = f"\n {'%' * 35} idx: 3, vnnlib ID: 3 {'%' * 35}\n"


def test_banner_and_result_lines_are_read():
    assert parse_line(BANNER) == Banner(3)
    assert parse_line("Result: safe-incomplete in 0.0880 seconds\n") == Outcome("safe-incomplete", 0.088)
    assert parse_line("Result: unsafe-pgd (timed out) in 61.2000 seconds") == Outcome("unsafe-pgd (timed out)", 61.2)
    for other in ("Result: unsat", "Time: 0.95", "verified_status unsafe-pgd", "idx: 3",
                  "Result: safe in soon seconds"):
        assert parse_line(other) is None


@pytest.mark.parametrize("status, seconds, verdict", [
    ("safe", 1.0, "unsat"), ("safe-incomplete", 0.1, "unsat"), ("safe-mip", 3.0, "unsat"),
    ("safe (timed out)", 70.0, "unsat"), ("unsafe-pgd", 0.5, "sat"), ("unsafe-bab", 9.0, "sat"), ("unsafe", 1.0, "sat"),
    ("unknown", 62.5, "timeout"), ("unknown", 3.0, "unknown"), ("unknown-mip", 3.0, "unknown"),
    ("timeout", 60.0, "timeout"), ("oops", 1.0, None),
])
def test_status_to_verdict(status, seconds, verdict):
    assert verdict_of(status, seconds, timeout=60.0) == verdict


def test_counterexample_files_in_both_layouts():
    abcrown = "((X_0  0.0)\n(X_1  0.30000001192092896)\n(Y_0  -3.5)\n(Y_1  2.25))"  # default_adv_saver
    vnncomp = "sat\n((X_0 0.0)\n (X_1 0.30000001192092896)\n (Y_0 -3.5)\n (Y_1 2.25))\n"
    for text in (abcrown, vnncomp):
        x, y = parse_assignment(text)
        assert x.tolist() == [0.0, 0.30000001192092896] and y.tolist() == [-3.5, 2.25]
    for broken in ("sat\n", "((X_0 1.0)\n(X_2 1.0)\n(Y_0 1.0))", "((X_0 abc)\n(Y_0 1.0))", "((X_0 1.0))"):
        with pytest.raises(MaarError, match="counterexample"):
            parse_assignment(broken)


def test_run_config_keeps_the_users_settings_and_replaces_what_selects_instances(tmp_path):
    user = {"general": {"csv_name": "theirs.csv", "root_path": "../x", "device": "cuda", "complete_verifier": "bab"},
            "model": {"onnx_path": "a.onnx", "input_shape": [-1, 784]},
            "data": {"start": 3, "end": 5}, "solver": {"batch_size": 8}, "attack": {"pgd_order": "before"}}
    config = run_config(user, tmp_path / "instances.csv", tmp_path, "cpu", 30.0)
    assert config["general"] == {"complete_verifier": "bab", "root_path": str(tmp_path.resolve()),
                                 "csv_name": "instances.csv", "device": "cpu",
                                 "results_file": str((tmp_path / "results.pkl").resolve()), "save_adv_example": True}
    assert "model" not in config and "data" not in config and config["solver"] == {"batch_size": 8}
    assert config["attack"] == {"pgd_order": "before", "cex_path": str((tmp_path / "counterexample.txt").resolve())}
    assert config["bab"] == {"timeout": 30.0}
    assert user["general"]["csv_name"] == "theirs.csv"  # the caller's mapping is not changed
    exported = run_config(None, tmp_path / "instances.csv", tmp_path, "cpu", 30.0)
    assert exported["solver"]["crown"] == {"compare_crown_with_ibp": True} and "model" not in exported


# A stand-in for abcrown.py. Per instance (by VNN-LIB file stem) it does what behaviour.yaml says, and logs
# every instance it starts to started.txt. "unsafe-flaky" writes a garbled counterexample the first time (as if
# the next instance had overwritten it) and a good one after.
FAKE_ABCROWN = textwrap.dedent('''
    import csv, pathlib, sys, time, yaml
    here = pathlib.Path(__file__).parent
    config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    general = config["general"]
    rows = list(csv.reader(open(pathlib.Path(general["root_path"]) / general["csv_name"])))
    behaviour = yaml.safe_load((here / "behaviour.yaml").read_text())
    print("loading torch and friends")
    for index, (onnx, vnnlib, timeout) in enumerate(rows):
        stem = pathlib.Path(vnnlib).stem
        print(f"\\n {'%' * 35} idx: {index}, vnnlib ID: {index} {'%' * 35}", flush=True)
        seen = (here / "started.txt").read_text().split().count(stem) if (here / "started.txt").exists() else 0
        with open(here / "started.txt", "a") as log:
            log.write(stem + "\\n")
        action = behaviour[stem]
        if action == "crash":
            raise RuntimeError("this instance crashes alpha-beta-CROWN")
        if action == "hang":
            time.sleep(600)
        if action.startswith("unsafe"):
            x = "\\n".join(f"(X_{i}  0.25)" for i in range(3))
            good = f"({x}\\n(Y_0  0.0)\\n(Y_1  0.0))"
            text = good if action != "unsafe-flaky" or seen else "(garbled"
            pathlib.Path(config["attack"]["cex_path"]).write_text(text)
        print(f"Result: {action.replace('-flaky', '')} in 0.0125 seconds", flush=True)
        for _ in range(200):  # the real one takes a while to reach the next instance: wait for the file's reader
            if not pathlib.Path(config["attack"]["cex_path"]).exists():
                break
            time.sleep(0.05)
    print("############# Summary #############")
''')


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    """A network and properties: ``always`` is violated everywhere in its box, ``never`` nowhere."""
    return write_tiny_benchmark(tmp_path)


def _instances(benchmark: Path, stems: list[str], timeout: float = 10.0) -> list[Instance]:
    """Copies of the two properties under the given stems (the stand-in acts by stem)."""
    instances = []
    for stem in stems:
        source = "always" if "always" in stem else "never"
        path = benchmark / f"{stem}.vnnlib"
        path.write_text((benchmark / f"{source}.vnnlib").read_text())
        instances.append(Instance(benchmark.parent / "models" / "net.onnx", path, timeout))
    return instances


def _fake_checkout(root: Path, behaviour: dict[str, str]) -> Path:
    folder = root / "fake-abcrown" / "complete_verifier"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "abcrown.py").write_text(FAKE_ABCROWN)
    (folder / "behaviour.yaml").write_text(yaml.safe_dump(behaviour))
    return folder.parent


def _started(checkout: Path) -> list[str]:
    path = checkout / "complete_verifier" / "started.txt"
    return path.read_text().split() if path.exists() else []


def test_verdicts_counterexamples_and_resume(benchmark, tmp_path):
    behaviour = {"proved": "safe-incomplete", "always_found": "unsafe-pgd", "open": "unknown", "lie": "unsafe-bab",
                 "always_flaky": "unsafe-flaky"}
    checkout = _fake_checkout(tmp_path, behaviour)
    instances = _instances(benchmark, list(behaviour))
    verifier = AbcrownVerifier(checkout)
    out = tmp_path / "out"
    results = verify_instances(instances, out, progress=False, verifier=verifier)

    assert [r.verdict for r in results] == ["unsat", "sat", "unknown", "unknown", "sat"]
    assert results[0].stage == "abcrown" and results[0].message == "α,β-CROWN: safe-incomplete"
    assert results[0].seconds == 0.0125 and results[0].stage_verdicts == {"abcrown": "proved"}
    # the garbled counterexample of always_flaky sent it to a process of its own, where it was good
    assert _started(checkout) == [*behaviour, "lie", "always_flaky"]
    # "lie" claims a counterexample for a property nothing violates: onnxruntime refutes it, twice
    assert "counterexample is missing or fails onnxruntime" in results[3].message
    text = (out / "results" / "net__always_found.txt").read_text()
    assert text.startswith("sat\n((X_0 0.25)")
    x, y = parse_assignment(text)
    assert np.allclose(x, 0.25) and y.shape == (2,)
    assert (out / "results" / "net__proved.txt").read_text() == "unsat\n"
    assert len(list((out / "abcrown").glob("run-*.log"))) == 3

    log = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("".join(line + "\n" for line in log if json.loads(line)["instance"] != "net__open"))
    (checkout / "complete_verifier" / "started.txt").unlink()
    again = verify_instances(instances, out, resume=True, progress=False, verifier=verifier)
    assert _started(checkout) == ["open"]
    assert [r.verdict for r in again] == [r.verdict for r in results]
    assert [json.loads(line)["index"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 3, 4, 2]
    assert [r.instance for r in read_log(out)] == [r.instance for r in results]


def test_a_crash_or_an_overrun_costs_one_instance(benchmark, tmp_path):
    behaviour = {"first": "safe", "crash": "crash", "hang": "hang", "last": "safe"}
    checkout = _fake_checkout(tmp_path, behaviour)
    instances = _instances(benchmark, list(behaviour), timeout=1.0)
    results = verify_instances(instances, tmp_path / "out", progress=False,
                               verifier=AbcrownVerifier(checkout, grace=1.0))
    assert [r.verdict for r in results] == ["unsat", "error", "timeout", "unsat"]
    assert "exited with status 1: RuntimeError: this instance crashes" in results[1].message
    assert "stopped" in results[2].message and 2.0 <= results[2].seconds < 30
    assert _started(checkout) == list(behaviour)


def test_an_abcrown_that_cannot_start_is_one_error(benchmark, tmp_path):
    checkout = _fake_checkout(tmp_path, {})
    (checkout / "complete_verifier" / "abcrown.py").write_text("import no_such_module_here\n")
    with pytest.raises(MaarError, match="before its first instance: ModuleNotFoundError"):
        verify_instances(_instances(benchmark, ["never"]), tmp_path / "out", progress=False,
                         verifier=AbcrownVerifier(checkout))
    with pytest.raises(MaarError, match=r"no complete_verifier/abcrown\.py"):
        AbcrownVerifier(tmp_path)


def test_cli_verify_and_certify_options(benchmark, tmp_path):
    checkout = _fake_checkout(tmp_path, {"always": "unsafe-pgd", "never": "safe"})
    csv_path = benchmark / "instances.csv"
    csv_path.write_text("../models/net.onnx,always.vnnlib,10\n../models/net.onnx,never.vnnlib,10\n")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(cli, ["verify", "--instances", str(csv_path), "--out", str(out), "--verifier", "abcrown",
                                 "--abcrown", str(checkout), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "abcrown" in result.output and "unsat: 1  sat: 1" in result.output and "alpha-CROWN" not in result.output
    single = runner.invoke(cli, ["verify", "--onnx", str(benchmark.parent / "models" / "net.onnx"), "--vnnlib",
                                 str(benchmark / "always.vnnlib"), "--verifier", "abcrown", "--abcrown", str(checkout)])
    assert single.exit_code == 0 and "sat\n((X_0 0.25)" in single.output
    for args, message in [(["--verifier", "abcrown"], "needs --abcrown"),
                          (["--abcrown", str(checkout)], "go with --verifier abcrown"),
                          (["--verifier", "abcrown", "--abcrown", str(checkout), "--pgd-steps", "3"], "--pgd-steps")]:
        refused = runner.invoke(cli, ["verify", "--instances", str(csv_path), "--out", str(tmp_path / "x"), *args])
        assert refused.exit_code == 1 and message in refused.output and len(refused.output.strip().splitlines()) == 1


@pytest.mark.skipif(not os.environ.get("MAAR_ABCROWN"),
                    reason="set MAAR_ABCROWN to an α,β-CROWN checkout (and MAAR_ABCROWN_PYTHON to its interpreter)")
def test_real_abcrown_agrees_on_the_shipped_benchmark(tmp_path):
    """Three ε = 0.3 instances: two that IBP proves (img00000, img00001) and a counterexample (img00008)."""
    repo = Path(__file__).resolve().parent.parent
    specs = repo / "vnnlib_specs" / "mnist-dm-small-maar-eps0.3"
    onnx = repo / "models" / "mnist-dm-small-maar-eps0.3.onnx"
    instances = [Instance(onnx, specs / f"img{index:05d}_eps0.3.vnnlib", 60.0) for index in (0, 1, 8)]
    verifier = AbcrownVerifier(Path(os.environ["MAAR_ABCROWN"]),
                               Path(os.environ.get("MAAR_ABCROWN_PYTHON") or sys.executable))
    results = verify_instances(instances, tmp_path / "out", progress=False, verifier=verifier)
    assert [r.verdict for r in results] == ["unsat", "unsat", "sat"], [r.message for r in results]
    assert results[2].counterexample is not None


def test_certify_with_abcrown_reports_complete_accuracy_only_and_keeps_its_verifier(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    onnx = tmp_path / "mnist.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(onnx), input_names=["input"], dynamo=False)
    checkout = _fake_checkout(tmp_path, {"img00000_eps0.1": "safe", "img00001_eps0.1": "unknown"})
    runner = CliRunner()
    arguments = ["certify", str(onnx), "--dataset", "mnist", "--eps", "0.1", "--count", "2", "--out",
                 str(tmp_path / "out"), "--timeout", "5", "--no-progress"]
    result = runner.invoke(cli, [*arguments, "--verifier", "abcrown", "--abcrown", str(checkout)])
    assert result.exit_code == 0, result.output
    certificate = json.loads((tmp_path / "out" / "certified_accuracy.json").read_text())
    assert certificate["verifier"] == "abcrown" and certificate["complete"] == 50.0 and certificate["open"] == 1
    assert certificate["clean"] is None and certificate["ibp"] is None
    assert result.output.splitlines()[-1].split()[3:] == ["-", "-", "-", "-", "-", "50.00%", "1"]
    mixed = runner.invoke(cli, [*arguments, "--resume"])
    assert mixed.exit_code == 1 and "holds verdicts of --verifier abcrown" in mixed.output


def test_reproduce_does_not_reuse_a_certificate_of_the_other_verifier(tmp_path):
    from maar_plugin.reproduce.run import _same_verifier

    (tmp_path / "certified_accuracy.json").write_text(json.dumps({"count": 2, "verifier": "abcrown"}))
    _same_verifier(tmp_path, AbcrownVerifier(_fake_checkout(tmp_path, {})))
    with pytest.raises(MaarError, match="certified with --verifier abcrown"):
        _same_verifier(tmp_path, None)
    _same_verifier(tmp_path / "not-yet", None)
