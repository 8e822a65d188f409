"""The HTML report of a test run (a face: uses the engine, imported by nothing below it).

`ReportWriter(folder, run)` is passed as `evaluate(..., on_batch=writer.add)`; it writes one
small JPEG strip per image as the batches come (input, reconstruction or anomaly map,
heat-map overlay with the ground-truth outline, and for pvqae the code-allocation maps
before and after the Budget Prior). `writer.finish(evaluation)` then writes the plots and
`index.html` (summary + the worst-scored images) and further pages of `PAGE_SIZE` images.
"""

from patchvq.report.writer import PAGE_SIZE, ReportWriter

__all__ = ["PAGE_SIZE", "ReportWriter"]
