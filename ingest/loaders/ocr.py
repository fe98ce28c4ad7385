"""OCR with Debian's tesseract (``tesseract-ocr``, ``-chi-sim``, ``-chi-tra``), run as a subprocess.

Only the languages that are installed are used, so a machine without the Chinese packs still reads English. Pages
are used only where a file has no text of its own (a scanned PDF page, an image, a slide that is one picture).
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from ingest.loaders.base import LoadContext, LoadOptions
from ingest.types import Page

INSTALL_HINT = "install OCR: apt-get install tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-chi-tra (`make browser`)"
_CJK = r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]"
_SCRIPT_VARIANTS = ("chi_sim", "chi_tra", "chi_sim_vert", "chi_tra_vert")
GOOD_CONFIDENCE = 90.0  # median word confidence above which the other Chinese script is not tried
SCRIPT_MARGIN = 3.0  # how much more confident a later script's run must be to win
MIN_SIDE = 500
_CJK_CHAR = re.compile(r"[\u4e00-\u9fff]")
_CJK_GAP = re.compile(rf"(?<={_CJK})[ \t]+(?={_CJK})")


@cache
def installed_languages() -> frozenset[str]:
    """Languages tesseract has data for; empty when tesseract is missing."""
    exe = shutil.which("tesseract")
    if exe is None:
        return frozenset()
    try:
        done = subprocess.run([exe, "--list-langs"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    return frozenset(ln.strip() for ln in lines[1:] if ln.strip() and " " not in ln.strip())


def ocr_languages(options: LoadOptions) -> str | None:
    """The wanted languages that are installed, in the wanted order, as tesseract's ``-l`` argument."""
    have = installed_languages()
    langs = [lang for lang in options.ocr_languages.split("+") if lang in have]
    return "+".join(langs) if langs else None


def language_runs(options: LoadOptions) -> list[str]:
    """One ``-l`` argument per Chinese script wanted (each with the other languages), best guess first.

    Given simplified and traditional models together, tesseract mixes scripts within a line; run by run, the
    run with the higher confidence wins (see :func:`ocr_image`).
    """
    langs = (ocr_languages(options) or "").split("+")
    scripts = [lang for lang in langs if lang in _SCRIPT_VARIANTS]
    others = [lang for lang in langs if lang and lang not in _SCRIPT_VARIANTS]
    if len(scripts) <= 1:
        return ["+".join(langs)] if langs != [""] else []
    return ["+".join([script, *others]) for script in scripts]


def ocr_available(options: LoadOptions) -> bool:
    return options.ocr and ocr_languages(options) is not None


def tidy_ocr(text: str) -> str:
    """Tesseract puts spaces between Chinese characters; drop those, keep line structure."""
    lines = [_CJK_GAP.sub("", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _tesseract(png: Path, langs: str, ctx: LoadContext) -> tuple[str, float] | None:
    """(text, median word confidence) from tesseract's TSV output, or None if it failed."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(
            ["tesseract", str(png), "stdout", "-l", langs, "--psm", "3", "tsv"],
            capture_output=True,
            timeout=ctx.options.ocr_timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        ctx.note(f"{ctx.name}: OCR of a page took over {ctx.options.ocr_timeout_s:.0f} s and was skipped")
        return None
    if done.returncode != 0:
        ctx.note(f"{ctx.name}: OCR failed on a page ({done.stderr.decode('utf-8', 'replace').strip()[:200]})")
        return None
    lines: dict[tuple[str, ...], list[str]] = {}
    confidences = []
    for row in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or not cols[11].strip():
            continue
        try:
            confidences.append(float(cols[10]))
        except ValueError:
            continue
        lines.setdefault(tuple(cols[1:5]), []).append(cols[11])  # page, block, paragraph, line
    text, last = [], None
    for key, words in lines.items():
        if last is not None and key[:3] != last[:3]:
            text.append("")  # a new paragraph
        text.append(" ".join(words))
        last = key
    return tidy_ocr("\n".join(text)), statistics.median(confidences) if confidences else 0.0


def _flatten(image):
    """RGB or greyscale on white: transparent pixels would otherwise turn black and hide dark text."""
    from PIL import Image

    if image.mode in ("RGB", "L"):
        return image
    if image.mode == "P" or "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def ocr_image(image, ctx: LoadContext) -> str:
    """Text of a PIL image (empty when OCR is off or unavailable)."""
    runs = language_runs(ctx.options) if ctx.options.ocr else []
    if not runs:
        return ""
    image = _flatten(image)
    if max(image.size) < MIN_SIDE:  # tesseract misses small text; enlarge tiny pictures
        factor = -(-MIN_SIDE // max(1, max(image.size)))
        image = image.resize((image.width * factor, image.height * factor))
    best: tuple[str, float] = ("", -1.0)
    with tempfile.TemporaryDirectory(prefix="kb-ocr-") as tmp:
        png = Path(tmp) / "page.png"
        image.save(png)
        for i, langs in enumerate(runs):
            result = _tesseract(png, langs, ctx)
            if result is not None and result[1] > best[1] + (SCRIPT_MARGIN if i else 0):
                best = result
            if best[1] >= GOOD_CONFIDENCE or len(_CJK_CHAR.findall(best[0])) < 5:
                break  # confident enough, or hardly any Chinese: the other script cannot do better
    return best[0]


def ocr_images(blobs: list[bytes], ctx: LoadContext) -> str:
    """OCR embedded pictures (a slide or document that is only images); unreadable pictures are skipped."""
    from PIL import Image, UnidentifiedImageError

    texts = []
    for blob in blobs:
        try:
            with Image.open(io.BytesIO(blob)) as image:
                image.load()
                texts.append(ocr_image(image, ctx))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue
    return "\n\n".join(t for t in texts if t)


class ImageLoader:
    """Pictures (PNG, JPEG, BMP, TIFF with all its pages, GIF, WebP, HEIC) read by OCR."""

    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".heic", ".heif")
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from PIL import Image, ImageSequence, UnidentifiedImageError

        if not ocr_available(ctx.options):
            reason = "OCR is switched off (ingest.ocr)" if not ctx.options.ocr else "OCR (tesseract) is not installed"
            raise ctx.error(f"an image needs OCR and {reason}", INSTALL_HINT if ctx.options.ocr else "")
        if path.suffix.lower() in (".heic", ".heif"):
            try:
                from pillow_heif import register_heif_opener

                register_heif_opener()
            except ImportError:
                raise ctx.error("HEIC pictures need pillow-heif", "pip install pillow-heif") from None
        try:
            with Image.open(path) as image:
                sequence = itertools.islice(ImageSequence.Iterator(image), ctx.options.max_ocr_pages)
                frames = [frame.copy() for frame in sequence]
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ctx.error(f"not a readable image ({exc})", "check that the picture opens in a viewer") from exc
        ctx.empty_hint = "OCR found no text in the picture"
        ctx.note(f"{ctx.name}: read by OCR")
        if len(frames) == 1:
            return [Page(ocr_image(frames[0], ctx))]
        return [Page(ocr_image(frame, ctx), number=i) for i, frame in enumerate(frames, 1)]
