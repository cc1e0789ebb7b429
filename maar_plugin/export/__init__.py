"""Export to the verification ecosystem: ONNX, VNN-LIB specs, instances.csv and an α,β-CROWN config."""
from maar_plugin.export.abcrown import abcrown_config, instances_csv_text, write_benchmark_files
from maar_plugin.export.batchnorm import fold_batchnorm
from maar_plugin.export.onnx_export import OnnxCheck, check_onnx, export_onnx, onnx_bytes
from maar_plugin.export.run import ExportPaths, ExportSummary, export_run, write_abcrown_config_only

__all__ = ["ExportPaths", "ExportSummary", "OnnxCheck", "abcrown_config", "check_onnx", "export_onnx",
           "export_run", "fold_batchnorm", "instances_csv_text", "onnx_bytes", "write_abcrown_config_only",
           "write_benchmark_files"]
