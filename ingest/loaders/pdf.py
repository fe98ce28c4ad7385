"""PDF through pypdfium2 (PDFium, the engine inside Chrome): the text layer page by page, OCR where a page has none.

Encrypted files open with ``ingest.password`` (``kb ingest --password``); PDFs with only an owner password (copy
protection) open without one. Page numbers are kept so citations can name them.
"""

from __future__ import annotations

from pathlib import Path

from ingest.loaders.base import LoadContext, clean_text
from ingest.loaders.ocr import INSTALL_HINT, ocr_available, ocr_image
from ingest.types import Page

PASSWORD_HINT = "give its password: `kb ingest FILE --password PW` (or ingest.password in kb.yaml)"
MIN_TEXT_CHARS = 3  # a page with fewer visible characters counts as having no text layer


class PdfLoader:
    suffixes = (".pdf",)
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        import pypdfium2 as pdfium

        password = ctx.options.password
        try:
            document = pdfium.PdfDocument(str(path), password=password)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                if password:
                    raise ctx.error(
                        "the PDF is encrypted and the password given does not open it", PASSWORD_HINT
                    ) from None
                raise ctx.error("the PDF is encrypted", PASSWORD_HINT) from None
            raise ctx.error(
                f"not a readable PDF ({exc})", "check that the file is complete and opens in a viewer"
            ) from exc
        try:
            return self._pages(document, ctx)
        finally:
            document.close()

    def _pages(self, document, ctx: LoadContext) -> list[Page]:
        import pypdfium2 as pdfium

        can_ocr = ocr_available(ctx.options)
        pages: list[Page] = []
        blank: list[int] = []
        ocr_done = 0
        for index in range(len(document)):
            number = index + 1
            try:
                page = document[index]
                textpage = page.get_textpage()
                text = clean_text(textpage.get_text_range())
                textpage.close()
            except pdfium.PdfiumError as exc:
                ctx.note(f"{ctx.name}: page {number} could not be read ({exc})")
                continue
            if len(text.strip()) < MIN_TEXT_CHARS:
                if can_ocr and ocr_done < ctx.options.max_ocr_pages:
                    image = page.render(scale=ctx.options.ocr_dpi / 72).to_pil()
                    text = ocr_image(image, ctx)
                    ocr_done += 1
                else:
                    blank.append(number)
            page.close()
            pages.append(Page(text, number=number))
            ctx.charge_text(text)
        if ocr_done:
            ctx.note(f"{ctx.name}: {ocr_done} page(s) without a text layer read by OCR")
        if blank and len(blank) < len(pages):
            ctx.note(f"{ctx.name}: {len(blank)} page(s) have no text layer and were not OCRed")
        if not can_ocr:
            reason = "OCR is switched off (ingest.ocr)" if not ctx.options.ocr else "OCR (tesseract) is not installed"
            ctx.empty_hint = f"the PDF has no text layer (scanned?) and {reason}"
            if ctx.options.ocr:
                ctx.empty_hint += f"; {INSTALL_HINT}"
        else:
            ctx.empty_hint = "the PDF has no text layer and OCR found no text in its pages"
        return pages
