"""E-mail: .eml through the standard library, Outlook .msg through python-oxmsg; attachments through the registry.

The text is the main headers (subject, from, to, cc, date), the body (plain text preferred, else HTML) and each
attachment's text under an ``Attachment: NAME`` line. Attached mails are read the same way, to a depth limit.
Encrypted (S/MIME, PGP) parts cannot be read and are reported as notes.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from ingest.loaders.base import LoadContext, TextLimitError, clean_text, safe_label
from ingest.loaders.markup import html_to_text
from ingest.types import Page

HEADERS = ("Subject", "From", "To", "Cc", "Date")
DECRYPT_HINT = "save a decrypted copy from your mail app and ingest that"
_ENCRYPTED = ("multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted")


def _part_text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    return content if isinstance(content, str) else ""


def _headers(message) -> list[str]:
    lines = []
    for name in HEADERS:
        try:
            value = message.get(name)
        except (ValueError, IndexError, TypeError):  # a malformed header the parser chokes on
            value = None
        if value:
            lines.append(f"{name}: {' '.join(str(value).split())}")
    return lines


def _attachment_block(ctx: LoadContext, filename: str, data: bytes) -> str:
    pages = ctx.nested(filename, data)
    text = "\n\n".join(p.text for p in pages if p.text.strip())
    return f"Attachment: {safe_label(filename)}\n{text}" if text else ""


def _walk(part):
    """Like ``Message.walk`` but does not descend into encrypted containers (their parts are ciphertext)."""
    yield part
    if part.is_multipart() and part.get_content_type() not in _ENCRYPTED:
        for child in part.iter_parts():
            yield from _walk(child)


def eml_text(raw: bytes, ctx: LoadContext) -> tuple[str, bool]:
    """The mail's text, and whether any of it was encrypted."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    blocks = ["\n".join(_headers(message))]
    plain: list[str] = []
    html: list[str] = []
    attachments: list[str] = []
    encrypted = False
    for part in _walk(message):
        ctype = part.get_content_type()
        if ctype in _ENCRYPTED:
            encrypted = True
            continue
        if part.is_multipart() and ctype != "message/rfc822":
            continue
        filename = part.get_filename()
        disposition = part.get_content_disposition()
        if ctype == "message/rfc822" or (filename or disposition == "attachment"):
            payload = part.get_payload(decode=True)
            if ctype == "message/rfc822" and not payload:
                inner = part.get_payload()
                payload = inner[0].as_bytes() if isinstance(inner, list) and inner else b""
            if payload:
                name = filename or ("attached.eml" if ctype == "message/rfc822" else f"attachment{_ext(ctype)}")
                if block := _attachment_block(ctx, name, payload):
                    attachments.append(block)
            continue
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            html.append(html_to_text(_part_text(part)))
    body = plain if any(t.strip() for t in plain) else html
    blocks.extend(t.strip() for t in body if t.strip())
    blocks.extend(attachments)
    return clean_text("\n\n".join(b for b in blocks if b)), encrypted and not any(b.strip() for b in blocks[1:])


def _ext(ctype: str) -> str:
    import mimetypes

    return mimetypes.guess_extension(ctype) or ".bin"


class EmlLoader:
    suffixes = (".eml", ".mht", ".mhtml")

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        try:
            text, only_encrypted = eml_text(path.read_bytes(), ctx)
        except (ValueError, IndexError, TypeError, LookupError) as exc:
            raise ctx.error(
                f"not a readable e-mail ({type(exc).__name__}: {exc})", "check that it opens in a mail app"
            ) from exc
        if only_encrypted:
            raise ctx.error("the e-mail is encrypted (S/MIME or PGP); only its headers are readable", DECRYPT_HINT)
        return [Page(text)]


class MsgLoader:
    """Outlook .msg (OLE compound file) through python-oxmsg."""

    suffixes = (".msg",)
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        from oxmsg import Message

        try:
            message = Message.load(str(path))
            headers = dict(message.message_headers or {})
            lines = [f"Subject: {message.subject}"] if message.subject else []
            if message.sender:
                lines.append(f"From: {message.sender}")
            for name in ("To", "Cc", "Date"):
                if headers.get(name):
                    lines.append(f"{name}: {' '.join(str(headers[name]).split())}")
            encrypted = "encrypted" in str(headers.get("Content-Type", "")).lower()
            body = message.body or ""
            if not body.strip() and message.html_body:
                body = html_to_text(message.html_body)
            blocks = ["\n".join(lines), body.strip()]
            for attachment in message.attachments:
                data = attachment.file_bytes
                if data:
                    name = attachment.file_name or f"attachment{_ext(attachment.mime_type or '')}"
                    blocks.append(_attachment_block(ctx, name, data))
        except TextLimitError:
            raise
        except Exception as exc:  # python-oxmsg/olefile raise many kinds for damaged files
            raise ctx.error(
                f"not a readable Outlook message ({type(exc).__name__}: {exc})", "check it opens in Outlook"
            ) from exc
        if encrypted and not any(b.strip() for b in blocks[1:]):
            raise ctx.error("the message is encrypted (S/MIME or PGP); only its headers are readable", DECRYPT_HINT)
        return [Page(clean_text("\n\n".join(b for b in blocks if b)))]
