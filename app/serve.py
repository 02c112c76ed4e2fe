"""Start the web app: `python -m app serve` and `python app.py` both end up in `launch` here.

The sample novel is ingested in a background thread at start-up (owner "sample"), so that a visitor's
"load the sample" click usually only adds them as an owner of the stored copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from app import zerogpu
from app.docqa import DocQA
from app.sample import SAMPLE_PDF, SampleBook
from app.settings import Settings, resolve_device

if TYPE_CHECKING:
    import gradio as gr


def create_app(
    settings: Settings | None = None, sample_path: str | Path = SAMPLE_PDF, preingest: bool = False
) -> tuple[DocQA, gr.Blocks]:
    """Build the library object and the web page over it.

    Args:
        sample_path: the document behind the "try the sample" button.
        preingest: start ingesting the sample in the background now.
    """
    settings = settings or Settings.from_env()
    # Uploads land in the app data folder, not in the system's /tmp/gradio (an explicit setting wins);
    # set before gradio is imported, which reads it.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.home / "uploads"))
    from app.ui import build_ui

    zerogpu.prepare(settings)
    qa = DocQA(settings=settings)
    sample = SampleBook(qa, Path(sample_path))
    if preingest and not settings.zero_gpu:  # on ZeroGPU there is no GPU outside a visitor's call
        sample.start()
    return qa, build_ui(qa, settings, sample=sample)


def launch(
    demo: gr.Blocks, settings: Settings, host: str | None = None, port: int | None = None, **kwargs
) -> int:
    """Serve `demo` (blocking unless kwargs say prevent_thread_lock=True); host/port default to settings."""
    from app.ui import launch_options

    concurrency = settings.concurrency or (4 if resolve_device(settings.device).startswith("cuda") else 1)
    demo.queue(default_concurrency_limit=concurrency).launch(
        server_name=host or settings.host,
        server_port=port or settings.port,
        **launch_options(settings),
        **kwargs,
    )
    return 0


def serve(host: str | None = None, port: int | None = None) -> int:
    """`python -m app serve`: build the app, pre-ingest the sample, serve until interrupted."""
    settings = Settings.from_env()
    _, demo = create_app(settings, preingest=True)
    return launch(demo, settings, host, port)
