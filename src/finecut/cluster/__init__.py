"""Refine a data set of millions of image/mask pairs on Ray Data (``finecut refine-dataset``).

* :mod:`finecut.cluster.items`: which pairs there are (a folder tree, or a CSV/JSONL manifest;
  local paths or any fsspec URL), where each one's output goes, which are done already.
* :mod:`finecut.cluster.work`: one pair's work (read through fsspec, refine, write the PNG) and
  :class:`~finecut.cluster.work.RefineBatch`, the callable class for ``Dataset.map_batches``
  that loads the refiner once per worker and turns every failure into a row.
* :mod:`finecut.cluster.ray_job`: the driver: start or join Ray, run the items, collect rows.

Only ``ray_job`` imports Ray (when called); this package imports the public refine API only.
"""

from __future__ import annotations
