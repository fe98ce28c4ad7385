"""Every supported format read into text (tables as readable rows, page numbers where a format has pages),
encodings detected, and hostile files reported by name with a reason. Loaders run in this process here;
tests/test_loaders_workers.py covers the worker processes and their limits."""

from __future__ import annotations

import email.message
import io
import json
import zipfile
from pathlib import Path

import docx
import openpyxl
import pptx
import pytest

from ingest.loaders import LoaderRegistry, LoadOptions, detect_encoding
from ingest.loaders.base import escape_controls, safe_label
from ingest.loaders.ocr import installed_languages
from ingest.loaders.tables import rows_to_text
from kb_app.errors import DocumentReadError, UnsupportedFileError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "formats"
ZH = "蓝鲸公司的报销流程分三步：提交发票，部门经理审批，财务在五个工作日内付款。"
ZH_TRADITIONAL = "請問報銷流程是什麼？員工旅遊補助辦法請見附件。"
EN = "The travel policy of Bluewhale Corp allows economy class for flights under six hours."
needs_ocr = pytest.mark.skipif(
    not {"chi_sim", "eng"} <= installed_languages(),
    reason="tesseract with chi_sim and eng is not installed (make system-deps)",
)


@pytest.fixture
def registry() -> LoaderRegistry:
    return LoaderRegistry(max_file_mb=5)


def text_of(registry: LoaderRegistry, path: Path, options: LoadOptions | None = None) -> str:
    document = registry.load(path, path.name, options)
    return "\n\n".join(p.text for p in document.pages)


# --- makers of small files in each format -------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("报销制度", 1)
    document.add_paragraph(ZH)
    table = document.add_table(rows=3, cols=2)
    for r, row in enumerate([("姓名", "部门"), ("张三", "财务部"), ("Alice", "Finance")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph(EN)
    document.save(str(path))
    return path


def make_pptx(path: Path) -> Path:
    presentation = pptx.Presentation()
    for title in ("第一页：公司简介", EN):
        slide = presentation.slides.add_slide(presentation.slide_layouts[5])
        slide.shapes.title.text = title
    slide = presentation.slides[1]
    shape = slide.shapes.add_table(
        2, 2, pptx.util.Inches(1), pptx.util.Inches(2), pptx.util.Inches(4), pptx.util.Inches(1)
    )
    for r, row in enumerate([("Region", "Sales"), ("North", "120")]):
        for c, value in enumerate(row):
            shape.table.cell(r, c).text = value
    slide.notes_slide.notes_text_frame.text = "Speaker notes: mention the budget."
    presentation.save(str(path))
    return path


def make_xlsx(path: Path) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "员工"
    sheet.append(["2024 年员工名单"])
    sheet.append(["姓名", "部门", "入职年份"])
    sheet.append(["张三", "财务部", 2019])
    sheet.append(["李四", "研发部", 2021.0])
    workbook.create_sheet("Empty")
    workbook.save(str(path))
    return path


def make_odt(path: Path) -> Path:
    ns = (
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ns}><office:body><office:text>'
        f'<text:h>制度</text:h><text:p>{ZH}</text:p><text:p>two<text:s text:c="2"/>spaces</text:p>'
        '<table:table table:name="T"><table:table-row><table:table-cell><text:p>Name</text:p></table:table-cell>'
        "<table:table-cell><text:p>Dept</text:p></table:table-cell></table:table-row><table:table-row>"
        "<table:table-cell><text:p>Alice</text:p></table:table-cell><table:table-cell><text:p>Finance</text:p>"
        '</table:table-cell><table:table-cell table:number-columns-repeated="16384"/></table:table-row>'
        "</table:table></office:text></office:body></office:document-content>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        archive.writestr("content.xml", content)
    return path


def make_epub(path: Path) -> Path:
    opf = (
        '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"><manifest>'
        '<item id="a" href="a.xhtml" media-type="application/xhtml+xml"/>'
        '<item id="b" href="b%20one.xhtml" media-type="application/xhtml+xml"/>'
        '</manifest><spine><itemref idref="b"/><itemref idref="a"/></spine></package>'
    )
    container = (
        '<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0">'
        '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
        "</rootfiles></container>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("META-INF/container.xml", container)
        archive.writestr("OEBPS/content.opf", opf)
        archive.writestr("OEBPS/a.xhtml", "<html><body><h1>Chapter two</h1><p>Second.</p></body></html>")
        archive.writestr("OEBPS/b one.xhtml", f"<html><body><h1>第一章</h1><p>{ZH}</p></body></html>")
    return path


def make_eml(path: Path, attachments: list[tuple[str, bytes]]) -> Path:
    message = email.message.EmailMessage()
    message["Subject"] = "报销 policy"
    message["From"] = "hr@example.com"
    message["To"] = "all@example.com"
    message.set_content(EN)
    message.add_alternative(f"<html><body><p>{EN}</p></body></html>", subtype="html")
    for name, data in attachments:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    path.write_bytes(message.as_bytes())
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- formats ------------------------------------------------------------------------------------------------------


def test_docx_keeps_paragraphs_and_table_rows(tmp_path: Path, registry: LoaderRegistry) -> None:
    text = text_of(registry, make_docx(tmp_path / "policy.docx"))
    assert ZH in text and EN in text
    assert "姓名: 张三 | 部门: 财务部" in text and "姓名: Alice | 部门: Finance" in text
    assert text.index(ZH) < text.index("张三") < text.index(EN)  # document order


def test_pptx_one_page_per_slide_with_tables_and_notes(tmp_path: Path, registry: LoaderRegistry) -> None:
    document = registry.load(make_pptx(tmp_path / "deck.pptx"), "deck.pptx")
    assert [p.number for p in document.pages] == [1, 2]
    assert "第一页：公司简介" in document.pages[0].text
    second = document.pages[1].text
    assert EN in second and "Region: North | Sales: 120" in second and "Notes: Speaker notes" in second


def test_xlsx_rows_are_named_by_the_header_row(tmp_path: Path, registry: LoaderRegistry) -> None:
    text = text_of(registry, make_xlsx(tmp_path / "staff.xlsx"))
    assert "2024 年员工名单" in text
    assert "姓名: 张三 | 部门: 财务部 | 入职年份: 2019" in text
    assert "入职年份: 2021" in text and "2021.0" not in text


def test_legacy_office_doc_xls_ppt(registry: LoaderRegistry) -> None:
    doc = text_of(registry, FIXTURES / "word97.doc")
    assert "Header Col 1 | Header Col 2" in doc and "A Link example" in doc
    assert "HYPERLINK" not in doc  # field codes dropped, field results kept
    xls = text_of(registry, FIXTURES / "excel97.xls")
    assert "What C datatypes are 8 bits?" in xls
    ppt = text_of(registry, FIXTURES / "slides97.ppt")
    assert "请假制度：每年十天年假" in ppt and "Annual leave policy" in ppt
    assert "Click to edit" not in ppt  # master-slide boilerplate


def test_pdf_pages_and_text_layer(registry: LoaderRegistry) -> None:
    document = registry.load(FIXTURES / "memo.pdf", "memo.pdf")
    assert [p.number for p in document.pages] == [1]
    assert "20,000 bottles of water" in document.pages[0].text


def test_csv_tsv_json_xml_html_md(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "a.csv").write_bytes("姓名;部门\n张三;财务部\n".encode("gbk"))
    (tmp_path / "b.tsv").write_text("Region\tSales\nNorth\t120\n", encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps({"policy": {"name": "travel", "days": [1, 2]}}), encoding="utf-8")
    (tmp_path / "d.ndjson").write_text('{"q": "报销"}\nnot json\n', encoding="utf-8")
    (tmp_path / "e.xml").write_text("<r><item><name>Alice</name><dept>Finance</dept></item></r>", encoding="utf-16")
    (tmp_path / "f.html").write_text(
        "<html><head><title>T</title><script>var secret = 1;</script><style>p{}</style></head><body>"
        f"<h1>政策</h1><p>{ZH}</p><table><tr><th>Name</th><th>Dept</th></tr><tr><td>Bob</td><td>IT</td></tr>"
        "</table></body></html>",
        encoding="utf-8",
    )
    (tmp_path / "g.md").write_text(f"# Policy\n\n{EN}\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", encoding="utf-8")
    (tmp_path / "h.rst").write_text(f"Policy\n======\n\n{EN}\n", encoding="utf-8")
    assert "姓名: 张三 | 部门: 财务部" in text_of(registry, tmp_path / "a.csv")
    assert "Region: North | Sales: 120" in text_of(registry, tmp_path / "b.tsv")
    assert "policy: name: travel" in text_of(registry, tmp_path / "c.json")
    assert "policy.days: 1, 2" in text_of(registry, tmp_path / "c.json")
    assert "q: 报销" in text_of(registry, tmp_path / "d.ndjson")
    assert "name: Alice\ndept: Finance" in text_of(registry, tmp_path / "e.xml")
    html = text_of(registry, tmp_path / "f.html")
    assert ZH in html and "Name: Bob | Dept: IT" in html and "secret" not in html and "p{}" not in html
    assert "| 1 | 2 |" in text_of(registry, tmp_path / "g.md")
    assert EN in text_of(registry, tmp_path / "h.rst")


def test_odt_epub_rtf(tmp_path: Path, registry: LoaderRegistry) -> None:
    odt = text_of(registry, make_odt(tmp_path / "a.odt"))
    assert ZH in odt and "two  spaces" in odt and "Name: Alice | Dept: Finance" in odt
    epub = text_of(registry, make_epub(tmp_path / "b.epub"))
    assert epub.index("第一章") < epub.index("Chapter two")  # spine order, not file order
    escaped = "".join(f"\\u{ord(c)}?" for c in "流程")
    gbk = "".join(f"\\'{b:02x}" for b in "报销".encode("gbk"))
    (tmp_path / "c.rtf").write_text(
        "{\\rtf1\\ansi\\ansicpg936{\\fonttbl{\\f0 SimSun;}}\\f0 " + gbk + " " + escaped + "\\par Policy text}",
        encoding="ascii",
    )
    rtf = text_of(registry, tmp_path / "c.rtf")
    assert "报销" in rtf and "流程" in rtf and "Policy text" in rtf


def test_eml_and_msg_with_attachments(tmp_path: Path, registry: LoaderRegistry) -> None:
    docx_bytes = make_docx(tmp_path / "x.docx").read_bytes()
    nested = zip_bytes({"inner/readme.txt": ZH_TRADITIONAL.encode("big5")})
    mail = make_eml(
        tmp_path / "mail.eml",
        [("../../policy.docx", docx_bytes), ("bundle.zip", nested), ("blob.bin", b"\x00\x01\x02" * 10)],
    )
    document, notes = registry.load_with_notes(mail, "mail.eml")
    text = document.pages[0].text
    assert "Subject: 报销 policy" in text and EN in text
    assert "Attachment: policy.docx" in text and "姓名: 张三 | 部门: 财务部" in text  # no '../' in the label
    assert "File: inner/readme.txt" in text and ZH_TRADITIONAL in text
    assert any("mail.eml/blob.bin" in n and "unsupported" in n for n in notes)
    msg = text_of(registry, FIXTURES / "outlook.msg")
    assert "Subject: Fake email with attachment" in msg
    assert "Attachment: fake-attachment.txt\nHey this is a fake attachment!" in msg


def test_zip_recursive_with_hostile_member_names(tmp_path: Path, registry: LoaderRegistry) -> None:
    inner = zip_bytes({"deep.txt": b"deep inside"})
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(
        zip_bytes({"../../etc/evil.txt": EN.encode(), "a\nb\x07.txt": ZH.encode(), "inner.zip": inner, "x/": b""})
    )
    text = text_of(registry, archive)
    assert "File: etc/evil.txt" in text and EN in text
    assert "File: a\\x0ab\\x07.txt" in text and ZH in text
    assert "File: inner.zip\nFile: deep.txt\ndeep inside" in text
    assert not (tmp_path.parent / "etc").exists()


def test_tables_become_rows_of_named_values() -> None:
    rows = [["Quarterly report"], ["Region", "Q1", "Q2"], ["North", 1.0, 2.5], ["South", None, 3]]
    assert (
        rows_to_text(rows)
        == "Quarterly report\nRegion | Q1 | Q2\nRegion: North | Q1: 1 | Q2: 2.5\nRegion: South | Q2: 3"
    )
    assert rows_to_text([["1", "2"], ["3", "4"]]) == "1 | 2\n3 | 4"  # numbers are no header


# --- encodings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("gbk", ZH),
        ("gb18030", ZH + "𠀀"),
        ("big5", ZH_TRADITIONAL),
        ("utf-16-le", ZH),
        ("utf-16-be", EN),
        ("utf-16", ZH),
        ("utf-8-sig", ZH),
        ("utf-8", ZH),
        ("cp1252", "Die schöne Frau trinkt Kaffee für 15,50 € — très bien, l'été était chaud."),
    ],
)
def test_text_encodings_are_detected(tmp_path: Path, registry: LoaderRegistry, encoding: str, text: str) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes((text * 3).encode(encoding))
    assert text_of(registry, path) == text * 3


def test_html_declared_charset_and_utf16(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "a.html").write_bytes(f'<meta charset="gb2312"><p>{ZH}</p>'.encode("gb18030"))
    (tmp_path / "b.html").write_bytes(f"<p>{ZH_TRADITIONAL}</p>".encode("utf-16"))
    assert ZH in text_of(registry, tmp_path / "a.html")
    assert ZH_TRADITIONAL in text_of(registry, tmp_path / "b.html")
    assert detect_encoding(b"\x00\x01\x02\x03binary\x00") is None


# --- OCR ----------------------------------------------------------------------------------------------------------


@needs_ocr
def test_ocr_of_pictures_and_pages_without_text_layer(registry: LoaderRegistry) -> None:
    image, notes = registry.load_with_notes(FIXTURES / "ocr.png", "ocr.png")
    assert "报销流程" in image.pages[0].text and "Reimbursement" in image.pages[0].text
    assert notes == ["ocr.png: read by OCR"]
    scan, notes = registry.load_with_notes(FIXTURES / "scanned.pdf", "scanned.pdf")
    assert scan.pages[0].number == 1 and "报销流程" in scan.pages[0].text
    assert "read by OCR" in notes[0]


def test_pdf_without_text_layer_and_no_ocr_says_why(registry: LoaderRegistry) -> None:
    with pytest.raises(DocumentReadError, match=r"scanned\.pdf: no text found \(the PDF has no text layer.*OCR is"):
        registry.load(FIXTURES / "scanned.pdf", "scanned.pdf", LoadOptions(ocr=False))
    with pytest.raises(DocumentReadError, match=r"ocr\.png: an image needs OCR"):
        registry.load(FIXTURES / "ocr.png", "ocr.png", LoadOptions(ocr=False))


# --- hostile input ------------------------------------------------------------------------------------------------


def test_encrypted_pdf_needs_its_password(tmp_path: Path, registry: LoaderRegistry) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(FIXTURES / "memo.pdf"))
    writer.encrypt("s3cret", algorithm="RC4-128")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(DocumentReadError, match=r"locked\.pdf: the PDF is encrypted\n  → .*--password"):
        registry.load(locked, "locked.pdf")
    with pytest.raises(DocumentReadError, match="password given does not open it"):
        registry.load(locked, "locked.pdf", LoadOptions(password="wrong"))
    assert "20,000 bottles" in text_of(registry, locked, LoadOptions(password="s3cret"))
    assert "s3cret" not in repr(LoadOptions(password="s3cret"))


def test_corrupt_truncated_empty_and_unsupported(tmp_path: Path, registry: LoaderRegistry) -> None:
    pdf = (FIXTURES / "memo.pdf").read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(pdf[: len(pdf) // 3])
    good_docx = make_docx(tmp_path / "ok.docx").read_bytes()
    (tmp_path / "truncated.docx").write_bytes(good_docx[: len(good_docx) // 2])
    (tmp_path / "truncated.xlsx").write_bytes(make_xlsx(tmp_path / "ok.xlsx").read_bytes()[:300])
    (tmp_path / "zero.pdf").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (tmp_path / "random.txt").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "signature.p7s").write_bytes(b"0\x82\x01")
    for name in ("truncated.pdf", "truncated.docx", "truncated.xlsx", "random.txt"):
        with pytest.raises(DocumentReadError, match=rf"^{name.replace('.', '[.]')}: "):
            registry.load(tmp_path / name, name)
    with pytest.raises(DocumentReadError, match=r"zero\.pdf: the file is empty"):
        registry.load(tmp_path / "zero.pdf", "zero.pdf")
    with pytest.raises(DocumentReadError, match=r"blank\.txt: no text found"):
        registry.load(tmp_path / "blank.txt", "blank.txt")
    with pytest.raises(UnsupportedFileError, match=r"signature\.p7s: unsupported file type '\.p7s'"):
        registry.load(tmp_path / "signature.p7s", "signature.p7s")


def test_wrong_extension_is_read_by_content(tmp_path: Path, registry: LoaderRegistry) -> None:
    (tmp_path / "really-docx.doc").write_bytes(make_docx(tmp_path / "x.docx").read_bytes())
    (tmp_path / "really-pdf.txt").write_bytes((FIXTURES / "memo.pdf").read_bytes())
    (tmp_path / "really-text.pdf").write_text(EN, encoding="utf-8")
    (tmp_path / "really-zip.dat").write_bytes(zip_bytes({"a.txt": EN.encode()}))
    document, notes = registry.load_with_notes(tmp_path / "really-docx.doc", "really-docx.doc")
    assert ZH in document.pages[0].text and "content is DOCX" in notes[0]
    document, notes = registry.load_with_notes(tmp_path / "really-pdf.txt", "really-pdf.txt")
    assert "20,000 bottles" in document.pages[0].text and "content is PDF" in notes[0]
    document, notes = registry.load_with_notes(tmp_path / "really-text.pdf", "really-text.pdf")
    assert document.pages[0].text == EN and "read as text" in notes[0]
    assert EN in text_of(registry, tmp_path / "really-zip.dat")


def test_huge_file_is_refused_without_being_read(tmp_path: Path, registry: LoaderRegistry) -> None:
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as fh:
        fh.truncate(500 * 1024 * 1024)  # sparse: 500 MB on paper, nothing on disk
    with pytest.raises(DocumentReadError, match=r"huge\.txt: 524 MB is over the 5 MB limit"):
        registry.load(huge, "huge.txt")


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    registry = LoaderRegistry(max_file_mb=5, options=LoadOptions(archive_max_mb=64))
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.txt", b"\0" * (40 * 1024 * 1024))
    with pytest.raises(DocumentReadError, match=r"bomb\.zip: 'zeros\.txt' is compressed \d+:1\n  → .*zip bomb"):
        registry.load(bomb, "bomb.zip")
    many = tmp_path / "wide.zip"
    many.write_bytes(zip_bytes({f"f{i}.txt": b"x" for i in range(30)}))
    narrow = LoaderRegistry(options=LoadOptions(archive_max_files=10))
    with pytest.raises(DocumentReadError, match=r"30 files, over the limit of 10"):
        narrow.load(many, "wide.zip")
    deep = b"bottom"
    for level in range(6):
        deep = zip_bytes({f"level{level}.zip" if level else "bottom.txt": deep})
    (tmp_path / "deep.zip").write_bytes(deep)
    with pytest.raises(DocumentReadError, match=r"deep\.zip: no text found"):
        registry.load(tmp_path / "deep.zip", "deep.zip")


def test_xml_entities_are_never_expanded(tmp_path: Path, registry: LoaderRegistry) -> None:
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 9))
    (tmp_path / "bomb.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "ha">{laughs}'
        '<!ENTITY xxe SYSTEM "file:///etc/passwd">]><r><a>&l8;</a><b>&xxe;</b><c>visible</c></r>',
        encoding="utf-8",
    )
    text = text_of(registry, tmp_path / "bomb.xml")
    assert "visible" in text and "root:" not in text and "hahaha" not in text


def test_names_are_escaped_for_display() -> None:
    assert escape_controls("bad\x07name\n.txt") == "bad\\x07name\\x0a.txt"
    assert escape_controls("caf\udce9.txt") == "caf\\xe9.txt"  # an undecodable byte, as os.fsdecode gives it
    assert safe_label("..\\..\\windows/system32/../x.txt") == "windows/system32/x.txt"
    assert safe_label("/abs/path.txt") == "abs/path.txt"
