"""Experiments on top of the training loop and the evaluator: the demo (the paper in
miniature on the embedded world), ablation grids, comparison reports and plots.

Command line: ``hif8qat demo``, ``hif8qat ablate GRID.toml``, ``hif8qat report RUN_DIR...``,
``hif8qat eval MODEL_DIR --tasks ...``. Python::

    import hif8qat.report as hr
    table = hr.compare(["runs/demo"])      # every run directory under runs/demo
    table.to_markdown(); table.to_pandas()
"""
from .report import (ReportTable, compare, evaluate_run, load_eval, load_run,  # noqa: F401
                     save_eval)

__all__ = ["ReportTable", "compare", "evaluate_run", "load_eval", "load_run", "save_eval"]
