"""``hif8qat.report``: the comparison table of training runs, for notebooks.

The same numbers as ``hif8qat report RUN_DIR...`` (see
:mod:`hif8qat.experiments.report` for the metrics' definitions)::

    >>> import hif8qat.report as hr                               # doctest: +SKIP
    >>> table = hr.compare(["runs/demo"])                        # doctest: +SKIP
    >>> table.rows[0]["acc_world_knowledge"]                     # doctest: +SKIP
    >>> df = table.to_pandas()                                   # doctest: +SKIP
"""
from .experiments.report import (ReportTable, RunData, compare, evaluate_model,  # noqa: F401
                                 evaluate_run, expand_run_dirs, load_eval, load_run,
                                 loss_ape, save_eval, saturation_stats)

__all__ = ["ReportTable", "RunData", "compare", "evaluate_model", "evaluate_run",
           "expand_run_dirs", "load_eval", "load_run", "loss_ape", "save_eval",
           "saturation_stats"]
