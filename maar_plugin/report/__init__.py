"""Reports one looks at, over one or several result folders (``maar report DIR [DIR ...]``).

``sources`` reads ``maar verify`` folders and side-by-side comparison folders as :class:`ResultSource`
(one per verifier); ``cactus`` (instances decided against time, as VNN-COMP draws it), ``funnel``
(instances entering and decided at each stage of our cascade) and ``counterexamples`` (clean image,
adversarial image, difference, labels) turn lists of ``InstanceResult`` into data and PNG figures;
``build`` renders them all, ``html`` puts them into one self-contained page, ``tables`` prints the
sources side by side.
"""
from maar_plugin.report.build import Figure, Report, build_report, write_figures
from maar_plugin.report.cactus import CactusLine, cactus_line, plot_cactus
from maar_plugin.report.counterexamples import (
                                                CounterexampleView,
                                                OnnxClassifier,
                                                clean_input,
                                                counterexample_view,
                                                image_shape,
                                                plot_counterexample,
                                                property_target,
)
from maar_plugin.report.funnel import FunnelStage, plot_funnel, stage_funnel
from maar_plugin.report.html import html_page
from maar_plugin.report.sources import ResultSource, read_counterexample, read_sources
from maar_plugin.report.tables import aligned_rows, side_by_side_table, summary_table, text_report

__all__ = [
    "CactusLine", "CounterexampleView", "Figure", "FunnelStage", "OnnxClassifier", "Report", "ResultSource",
    "aligned_rows", "build_report", "cactus_line", "clean_input", "counterexample_view", "html_page", "image_shape",
    "plot_cactus", "plot_counterexample", "plot_funnel", "property_target", "read_counterexample", "read_sources",
    "side_by_side_table", "stage_funnel", "summary_table", "text_report", "write_figures",
]
