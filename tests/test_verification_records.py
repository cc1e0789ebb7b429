"""A results folder's tables and the merge of shard logs, on records made by hand."""
from __future__ import annotations

import csv
import io
import json

from maar_plugin.verification import InstanceResult, merge_summaries, read_log, stage_table
from maar_plugin.verification.run.tables import instance_table


def result(name: str, verdict: str, stage: str | None, seconds: float, ran: dict[str, str]) -> InstanceResult:
    return InstanceResult(name, f"{name}.onnx", f"{name}.vnnlib", verdict, stage, seconds,
                          {key: seconds / len(ran) for key in ran}, ran, unstable_relus=10)


RESULTS = [
    result("a", "unsat", "IBP", 1.0, {"centre": "open", "IBP": "proved"}),
    result("b", "sat", "pgd", 2.0, {"centre": "open", "IBP": "open", "pgd": "falsified"}),
    result("c", "unsat", "BaB", 4.0, {"centre": "open", "IBP": "open", "pgd": "open", "CROWN": "open",
                                      "alpha-CROWN": "open", "BaB": "proved"}),
    result("d", "timeout", None, 9.0, {"centre": "open", "IBP": "open", "pgd": "open", "CROWN": "open",
                                       "alpha-CROWN": "open", "BaB": "open"}),
]


def rows_of(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:] if line.strip()}


def test_stage_table_counts_per_stage_and_cumulatively():
    rows = rows_of(stage_table(RESULTS))
    #               ran proved falsified open proved<=stage
    assert rows["centre"][:5] == ["4", "0", "0", "4", "0"]
    assert rows["IBP"][:5] == ["4", "1", "0", "3", "1"]
    assert rows["pgd"][:5] == ["3", "0", "1", "2", "1"]
    assert rows["BaB"][:5] == ["2", "1", "0", "1", "2"]
    assert rows["total"][:4] == ["4", "2", "1", "1"]
    assert rows["total"][4:] == ["4.000", "3.000", "9.000"]          # mean, median, max seconds
    assert "verdicts  unsat: 2  sat: 1  unknown: 0  timeout: 1  error: 0" in stage_table(RESULTS)


def test_instance_table_has_one_line_per_instance():
    lines = instance_table(RESULTS).splitlines()
    assert len(lines) == 2 + len(RESULTS)
    assert lines[2].split()[:4] == ["a", "unsat", "IBP", "1.000"] and lines[5].split()[:3] == ["d", "timeout", "-"]


def write_log(path, records) -> None:
    path.write_text("".join(json.dumps({**r.log_record(), "index": index}) + "\n" for index, r in records))


def test_merge_summaries_puts_shards_in_csv_order_and_later_records_win(tmp_path):
    write_log(tmp_path / "log.shard-0-of-2.jsonl", [(0, RESULTS[0]), (2, RESULTS[2])])
    retried = result("d", "unsat", "BaB", 30.0, {"BaB": "proved"})
    write_log(tmp_path / "log.shard-1-of-2.jsonl", [(3, RESULTS[3]), (1, RESULTS[1]), (3, retried)])
    (tmp_path / "log.shard-1-of-2.jsonl").write_text((tmp_path / "log.shard-1-of-2.jsonl").read_text() + '{"torn')
    merged = merge_summaries(tmp_path)
    assert merged == tmp_path / "summary.csv"
    rows = list(csv.DictReader(io.StringIO(merged.read_text())))
    assert [(row["instance"], row["verdict"]) for row in rows] == [("a", "unsat"), ("b", "sat"), ("c", "unsat"),
                                                                   ("d", "unsat")]
    assert [r.instance for r in read_log(tmp_path)] == ["a", "b", "c", "d"]


def test_an_unsharded_folder_needs_no_merge(tmp_path):
    write_log(tmp_path / "log.jsonl", [(0, RESULTS[0])])
    assert merge_summaries(tmp_path) is None and not (tmp_path / "summary.csv").exists()
