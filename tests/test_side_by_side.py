"""benchmarks/side_by_side.py as a subprocess, on a tiny VNN-COMP-like checkout (two sets of the tiny
network's properties) with a stand-in α,β-CROWN that answers by property name: the summary's counts and
contradictions, a seeded sample resumed to the whole set, and one-line errors for what is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from helpers import pythonpath_with, write_tiny_benchmark
from maar_plugin.report.sources import read_sources

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for abcrown.py in single-instance mode: answers by the VNN-LIB file's stem, caches beside its
# inputs as the real one does (*.compiled), and logs what it was given to started.txt.
FAKE_ABCROWN = textwrap.dedent('''
    import json, pathlib, sys, yaml
    config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    vnnlib = pathlib.Path(config["specification"]["vnnlib_path"])
    answer = {"always": "sat", "never": "unsat", "also": "sat", "never_crash": "crash"}[vnnlib.stem]
    with open(pathlib.Path(__file__).parent / "started.txt", "a") as log:
        log.write(json.dumps({"stem": vnnlib.stem, "link": vnnlib.is_symlink(), "timeout": config["bab"]["timeout"],
                              "parallel_solvers": config["solver"]["mip"]["parallel_solvers"]}) + "\\n")
    pathlib.Path(str(vnnlib) + ".compiled").write_text("cache")
    if answer == "crash":
        raise RuntimeError("this instance crashes alpha-beta-CROWN")
    pathlib.Path(config["general"]["results_file"]).write_text(answer + "\\n")
    print(f"Result: {answer}\\nTime: 0.01")
''')


def tiny_checkouts(root: Path) -> tuple[Path, Path]:
    """A VNN-COMP 2022 benchmarks checkout with mnist_fc (always, never, also) and acasxu (never_crash),
    and an α,β-CROWN checkout holding the stand-in and the two sets' configs."""
    suite = root / "vnncomp2022"
    for name, stems in {"mnist_fc": ["always", "never", "also"], "acasxu": ["never_crash"]}.items():
        folder = suite / "benchmarks" / name
        folder.mkdir(parents=True)
        specs = write_tiny_benchmark(folder)
        (specs / "never_crash.vnnlib").write_text((specs / "never.vnnlib").read_text())
        (folder / "instances.csv").write_text("".join(f"models/net.onnx,specs/{stem}.vnnlib,300\n" for stem in stems))
    abcrown = root / "alpha-beta-CROWN" / "complete_verifier"
    (abcrown / "exp_configs" / "vnncomp22").mkdir(parents=True)
    (abcrown / "exp_configs" / "vnncomp21").mkdir()
    (abcrown / "abcrown.py").write_text(FAKE_ABCROWN)
    config = {"general": {"root_path": "../x", "csv_name": "instances.csv", "complete_verifier": "bab-refine"},
              "data": {"start": 30, "end": 90}, "solver": {"mip": {"parallel_solvers": 32}}}
    (abcrown / "exp_configs" / "vnncomp22" / "mnistfc.yaml").write_text(yaml.safe_dump(config))
    (abcrown / "exp_configs" / "vnncomp21" / "acasxu.yaml").write_text(yaml.safe_dump(config))
    return suite, abcrown.parent


def side_by_side(*arguments: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=pythonpath_with(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "side_by_side.py"), *arguments],
                          env=environment, capture_output=True, text=True, timeout=600)


def started(abcrown: Path) -> list[dict]:
    path = abcrown / "complete_verifier" / "started.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_counts_contradictions_and_a_sample_resumed_to_the_whole_set(tmp_path):
    suite, abcrown = tiny_checkouts(tmp_path)
    out = tmp_path / "out"
    common = ["--vnncomp2022", str(suite), "--sets", "mnist_fc,acasxu", "--abcrown", str(abcrown),
              "--abcrown-python", sys.executable, "--timeout", "20", "--out", str(out)]

    first = side_by_side(*common, "--sample", "2", "--seed", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ETA" in first.stdout
    sampled = json.loads((out / "mnist_fc" / "comparison.json").read_text())
    assert len(sampled) == 2 and len(started(abcrown)) == 3
    assert all(run["link"] and run["timeout"] == 20 and run["parallel_solvers"] == 1 for run in started(abcrown))
    assert not list(suite.rglob("*.compiled"))  # α,β-CROWN's caches stay out of the checkout

    second = side_by_side(*common)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 of 3 instances already in" in second.stdout and "1 of 1 instances already in" in second.stdout
    assert len(started(abcrown)) == 4  # only the instance the sample left out ran
    rows = {row["instance"]: row for row in json.loads((out / "mnist_fc" / "comparison.json").read_text())}
    assert len(rows) == 3 and all(rows[row["instance"]] == row for row in sampled)  # earlier runs kept as they were

    summary = json.loads((out / "summary.json").read_text())
    mnist, acas, total = summary["sets"]["mnist_fc"], summary["sets"]["acasxu"], summary["total"]
    assert (mnist["instances"], mnist["maar"]["sat"], mnist["maar"]["unsat"]) == (3, 1, 2)
    assert (mnist["abcrown"]["sat"], mnist["abcrown"]["unsat"]) == (2, 1)
    assert mnist["contradictions"] == ["net__also"] and mnist["both_decide"] == 3
    assert (acas["maar"]["unsat"], acas["abcrown"]["errors"], acas["both_decide"]) == (1, 1, 0)
    assert acas["contradictions"] == []
    assert acas["median_wall_ratio"] is None
    assert (total["instances"], total["maar"]["errors"], total["abcrown"]["errors"]) == (4, 0, 1)
    assert total["contradictions"] == ["mnist_fc/net__also"] and total["both_decide"] == 3
    assert total["median_wall_ratio"] == mnist["median_wall_ratio"] > 0
    table = (out / "summary.md").read_text()
    assert "| mnist_fc | 3 | 1 / 2 | 2 / 1 | 1 | 0 / 0 | 3 |" in table and "| **total** | 4 |" in table
    assert "- acasxu abcrown: 1, the first net__never_crash: exit 1:" in table and "crashes alpha-beta-CROWN" in table
    assert table in second.stdout

    sources = read_sources([out / "mnist_fc"])  # what `maar report` draws
    assert [len(source.results) for source in sources] == [3, 3]


def test_what_is_missing_is_one_line(tmp_path):
    suite, abcrown = tiny_checkouts(tmp_path)
    common = ["--abcrown", str(abcrown), "--abcrown-python", sys.executable, "--out", str(tmp_path / "out")]
    for arguments, message in [
            (["--vnncomp2021", str(suite), "--sets", "oval21"],
             "benchmarks/oval21/oval21_instances.csv does not exist"),
            (["--sets", "mnist_fc"], "give --vnncomp2022 DIR"),
            (["--vnncomp2022", str(suite), "--sets", "mnist_fcc"], "unknown set mnist_fcc"),
            (["--extra", f"mine={suite}/benchmarks/mnist_fc/instances.csv"], "abcrown.yaml does not exist")]:
        result = side_by_side(*common, *arguments)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
