"""Results tables: train a recipe's objectives over seeds, evaluate and certify each run, report the table."""
from maar_plugin.reproduce.rows import Row, parse_row, parse_rows, parse_seeds
from maar_plugin.reproduce.run import PLAN_NAME, Plan, read_plan, reproduce
from maar_plugin.reproduce.table import collect_results, markdown_report, paired_effects, plot_report, summary_rows

__all__ = ["PLAN_NAME", "Plan", "Row", "collect_results", "markdown_report", "paired_effects", "parse_row",
           "parse_rows", "parse_seeds", "plot_report", "read_plan", "reproduce", "summary_rows"]
