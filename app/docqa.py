"""DocQA: the library API behind the CLI and the web app, a thin facade over three parts.

from app import DocQA
qa = DocQA()                       # store under DOCQA_HOME (default ~/.cache/bsbr-docqa)
doc_id = qa.add("book.pdf")        # extract pages -> clean -> chunk -> index; same file twice = once
answers = qa.ask("Who rents Netherfield?", methods=("bsbr", "faiss"))

- ingest/pipeline.py: a document's way into the store (also used by `ingest-many`);
- app/library.py: owners, listing, deletion, chunks as evidence;
- app/answering.py: retrieve, read, aggregate. The methods are in app/methods.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from app import methods as registry
from app.answering import READ_K_CPU, READ_K_GPU, Answerer
from app.engine import QAEngine
from app.library import Library
from app.settings import Settings, resolve_cpu_bf16, resolve_device
from app.types import Answer, IngestReport
from ingest.pipeline import Pipeline, Prepared, StageProgress, Stored
from ingest.store import DocumentInfo, DocumentStore, StoreError

MAX_QUESTION_CHARS = 1000


class DocQA:
    """Documents in, answers with evidence out. Thread-safe; one instance serves a whole app.

    Args:
        home: data folder (default: settings.home, i.e. DOCQA_HOME).
        device: "cpu", "cuda" or "auto" (default: DOCQA_DEVICE, else auto).
        settings: limits and defaults (default: read from the environment).
    """

    def __init__(
        self, home: str | Path | None = None, device: str | None = None, settings: Settings | None = None
    ) -> None:
        from app.retrievers import Bm25Retriever, BsbrRetriever, FaissLibrary, FaissRetriever, HybridRetriever

        self.settings = settings or Settings.from_env()
        self.device = resolve_device(device or self.settings.device)
        self.store = DocumentStore(home or self.settings.home)
        cpu_bf16 = self.device == "cpu" and resolve_cpu_bf16(self.settings.cpu_bf16)
        graphs = self.settings.cuda_graphs and not self.settings.zero_gpu
        self.engine = QAEngine.load_if_present(self.device, self.settings.model_dir, cpu_bf16, graphs)
        self.faiss = FaissRetriever(self.store, self.device, cpu_bf16)
        self.bm25 = Bm25Retriever(self.store)
        self.hybrid = HybridRetriever(self.faiss, self.bm25)
        self.retrievers = {"faiss": self.faiss, "bm25": self.bm25, "hybrid": self.hybrid}
        indexers = [self.faiss]
        if self.engine is not None:
            self.retrievers["bsbr"] = BsbrRetriever(self.store, self.engine)
            indexers.append(self.retrievers["bsbr"])
        self.pipeline = Pipeline(self.store, indexers, self.settings)
        self.library = Library(self.store, on_forget=[r.forget for r in self.retrievers.values()])
        self.read_k = self.settings.read_k or (READ_K_GPU if self.device.startswith("cuda") else READ_K_CPU)
        library_index = FaissLibrary(self.store, self.faiss)  # ingest-many's, where it has built one
        self.answerer = Answerer(
            self.library, self.retrievers, self.engine, self.read_k, self.settings.aggregate, library_index
        )

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method that can answer here (BSBR needs the trained weights, assets/qa_model)."""
        return registry.available(self.engine is not None)

    @property
    def shown(self) -> tuple[str, ...]:
        """The methods the web page ticks by default."""
        return tuple(m for m in self.methods if registry.BY_NAME[m].shown)

    # -- documents in -------------------------------------------------------------------------------

    def add(
        self,
        path: str | Path,
        progress: StageProgress | None = None,
        owner: str = "local",
        password: str | None = None,
    ) -> str:
        """Ingest a file (PDF, .txt, .md) and return its document id. See `ingest` for details."""
        return self.ingest(path, progress=progress, owner=owner, password=password).doc_id

    def ingest(
        self,
        path: str | Path,
        progress: StageProgress | None = None,
        owner: str = "local",
        password: str | None = None,
    ) -> IngestReport:
        """Extract, clean, chunk and index a file; store it for `owner`.

        Args:
            progress: called as progress(stage, done, total) with stage in
                "extract", "chunk", "embed", "bsbr".
        Raises:
            ingest.errors.IngestError (one-line message naming the file) for unreadable input.
        """
        return _report(self.pipeline.ingest_file(Path(path), owner, password, progress))

    def add_text(
        self, text: str, title: str = "text", owner: str = "local", progress: StageProgress | None = None
    ) -> IngestReport:
        """Ingest raw text as a one-page document, kept exactly as given (offsets into it stay valid)."""
        return _report(self.pipeline.ingest_text(text, title, owner, progress))

    def add_prepared(self, prepared: Prepared, owner: str = "local") -> IngestReport:
        """The index stages (FAISS embedding, BSBR pass) and the store write of a document whose CPU
        stages ran elsewhere, e.g. in `ingest-many`'s workers. A copy stored meanwhile is only claimed."""
        return _report(self.pipeline.store_prepared(prepared, owner))

    def resolve(self, doc: str, owner: str | None = "local", progress: StageProgress | None = None) -> str:
        """A document id, or a file path that is ingested on first use, -> document id."""
        if self.store.visible(doc, owner):
            return doc
        path = Path(doc)
        if path.exists():
            return self.add(path, progress=progress, owner=owner or "local")
        raise StoreError(f"{doc}: neither a stored document id nor an existing file")

    # -- the library --------------------------------------------------------------------------------

    def documents(self, owner: str | None = "local") -> list[DocumentInfo]:
        """Documents visible to `owner` (every document when owner is None)."""
        return self.library.documents(owner)

    def delete(self, doc_id: str, owner: str | None = "local") -> None:
        """Forget a document for `owner`; its data goes when no owner is left."""
        self.library.delete(doc_id, owner)

    # -- answers out --------------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        docs: Sequence[str] | None = None,
        methods: Sequence[str] = ("faiss",),
        top_k: int = 5,
        owner: str | None = "local",
        retrieve_k: int | None = None,
    ) -> list[Answer]:
        """Answer `question` from `docs` (default: every document of `owner`) with each method.

        Args:
            methods: names from app/methods.py ("bsbr", "faiss", "hybrid", "bm25").
            top_k: evidence passages returned per answer.
            retrieve_k: candidates kept from the retrieval stage (default max(top_k, self.read_k));
                Answer.retrieved lists them in retrieval order.
        Returns:
            one Answer per method, in the order asked, each with up to `top_k` evidence passages.
        """
        question = " ".join(question.split())
        if not question:
            raise ValueError("the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question is over {MAX_QUESTION_CHARS} characters")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        methods = [registry.canonical(m) for m in methods]
        unavailable = [m for m in methods if m not in self.methods]
        if unavailable:
            raise ValueError(f"method {unavailable[0]!r} is not available (no trained weights loaded)")
        doc_ids = self.library.doc_ids(docs, owner)
        if self.engine is None or {"faiss", "hybrid"} & set(methods):
            self.faiss.embedder  # noqa: B018 - load the encoder before any answer's clock starts
        depth = max(top_k, retrieve_k or self.read_k)
        readings: dict = {}  # the reader's verdicts, shared by the methods that read without a cache
        with self.faiss.one_question():
            return [self.answerer.answer(m, question, doc_ids, top_k, depth, readings) for m in methods]


def _report(stored: Stored) -> IngestReport:
    info = stored.info
    return IngestReport(
        doc_id=info.id,
        title=info.title,
        filename=info.filename,
        pages=info.n_pages,
        tokens=info.n_tokens,
        chunks=info.n_chunks,
        seconds=stored.seconds,
        new=stored.new,
        scanned_pages=info.scanned_pages,
        warnings=info.warnings,
        timings=info.timings,
    )
