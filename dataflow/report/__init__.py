"""See the data: an HTML report of a pipeline's cache folder, and a notebook helper for duplicate groups.

``build_report(cache_path)`` writes one self-contained HTML file (``dataflow report CACHE_DIR``);
``plot_duplicates(cache_path, image)`` draws one image's duplicate group with matplotlib.
"""

from dataflow.report.cache import CacheView, ReportError, ReportWriteError
from dataflow.report.groups import duplicate_groups
from dataflow.report.html_report import build_report
from dataflow.report.notebook import duplicate_group, plot_duplicates

__all__ = [
    "build_report",
    "plot_duplicates",
    "duplicate_group",
    "duplicate_groups",
    "CacheView",
    "ReportError",
    "ReportWriteError",
]
