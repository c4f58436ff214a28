"""One self-contained HTML page of the whole experiment: ``python -m classify.report``.

It reads only what the stages wrote (``OUT/run.json``, ``comparison.csv``, ``predictions.csv``,
``split.csv``, ``learning_curve.csv``, ``figures/``, ``reports/``, ``audit/`` and the cache
``FEATURES/<input-id>/<key>/``) and writes ``OUT/report.html``: figures and thumbnails are
embedded as base64 ``data:`` URIs, so the page opens offline, and nothing on it points to the
network. Thumbnails are made once and cached in ``OUT/report_cache/thumbs/<sha256>-<size>.jpg``.
No TensorFlow here. IN and FEATURES default to the run's (:mod:`classify.remembered`).

The page opens on the answer (:mod:`.card`), then the comparison (:mod:`.comparison`), the
figures (:mod:`.plots`), the misclassified images (:mod:`.gallery`), the data (:mod:`.dataset`),
the embedding map (:mod:`.embedding`), the audit (:mod:`.audit_section`) and, folded away, the
settings (:mod:`.settings`); :mod:`.page` lays them out, :mod:`.markup` writes the HTML pieces,
:mod:`.thumbs` the thumbnails, :mod:`.build` reads the files and puts the page together.
"""

from .build import build_report
from .cli import main

__all__ = ["build_report", "main"]
