"""`html-text`: plain text from HTML (resiliparse), in two modes.

- `main-content` (the default): only the page's main content (navigation, headers, footers and
  boilerplate dropped by resiliparse's main-content heuristics), lines stripped, blank lines removed.
- `plain`: all visible text exactly as resiliparse's `extract_plain_text` gives it (the CS336
  `extract_text_from_html_bytes`), blank lines kept.

Raw bytes (an HTML file, a WARC record, `apply(b"...")`) are decoded as UTF-8 when valid, else with
the encoding resiliparse detects.
"""
from __future__ import annotations

import re

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter, decode_bytes

_HTML_SNIFF = re.compile(r"<\s*(!doctype\s+html|html|head|body|div|p|span|a\s|table|br)\b", re.I)


def extract_text(html: str | bytes, mode: str = "plain") -> str:
    """The text of an HTML page (str, or bytes in any encoding): `plain` is all visible text as
    resiliparse extracts it; `main-content` only the main content, one stripped line per block."""
    from resiliparse.extract.html2text import extract_plain_text

    if isinstance(html, (bytes, bytearray)):
        html = decode_bytes(bytes(html))
    if mode == "plain":
        return extract_plain_text(html)
    text = extract_plain_text(html, main_content=True)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


class HtmlText(DocumentFilter):
    """Extract plain text from HTML with resiliparse: `mode: main-content` keeps the main content
    only (navigation, footers dropped; blank lines removed), `mode: plain` keeps all visible text
    as resiliparse's plain-text extraction gives it (blank lines kept). Bytes are decoded with the
    detected encoding. A document whose extracted text is shorter than `min_chars` is dropped."""

    name = "html-text"

    def decide(self, doc: Document) -> Decision:
        if doc.raw is not None:
            html = doc.raw
        else:
            html = doc.text
            if self.params["only_html"] and doc.meta.get("format") != "html" and not _HTML_SNIFF.search(html[:4096]):
                return Decision.keep(doc.text)
        text = extract_text(html, self.params["mode"])
        if len(text.strip()) < self.params["min_chars"]:
            return Decision.drop(text, "no_text")
        return Decision.keep(text)
