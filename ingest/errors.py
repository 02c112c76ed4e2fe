"""Typed ingestion errors. str(error) is one line: '<file>: <reason>'."""

from __future__ import annotations


class IngestError(Exception):
    """Base class: a document could not be ingested. Carries the file name and a one-line reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled as (path, reason): errors raised in extraction workers reach the caller
        return type(self), (self.path, self.reason)


class FileMissingError(IngestError):
    """The path does not exist or is not a regular file."""


class UnsupportedTypeError(IngestError):
    """The file type is not one we read (PDF, .txt, .md)."""


class CorruptDocumentError(IngestError):
    """The file claims a type we read but cannot be parsed (truncated, broken xref, random bytes)."""


class EncryptedDocumentError(IngestError):
    """The PDF is encrypted and no (correct) password was given."""


class EmptyDocumentError(IngestError):
    """The document has no extractable text (empty file, or every page scanned without a text layer)."""


class LimitExceededError(IngestError):
    """The document is over a configured limit (file size, pages, characters)."""
