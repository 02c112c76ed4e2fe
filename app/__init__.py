"""BSBR DocQA: the library API (DocQA), the CLI (python -m app) and the web UI (app.ui)."""

from app.docqa import DocQA
from app.types import Answer, Evidence, IngestReport

__all__ = ["DocQA", "Answer", "Evidence", "IngestReport"]
