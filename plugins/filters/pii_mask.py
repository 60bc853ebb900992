"""`pii-mask`: emails, US phone numbers and IPv4 addresses replaced by |||EMAIL_ADDRESS||| etc."""
from __future__ import annotations

import re

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter

EMAIL_MASK, PHONE_MASK, IP_MASK = "|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||", "|||IP_ADDRESS|||"
EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# US numbers: optional +1, area code plain or in parentheses, separators space . or - (or none)
PHONE_RE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")


def mask_emails(text: str) -> tuple[str, int]:
    """Replace email addresses with |||EMAIL_ADDRESS|||; returns (text, replacements)."""
    return EMAIL_RE.subn(EMAIL_MASK, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    """Replace US phone numbers (2831823829, (283)-182-3829, (283) 182 3829, 283-182-3829, +1 ...)."""
    return PHONE_RE.subn(PHONE_MASK, text)


def mask_ips(text: str) -> tuple[str, int]:
    """Replace IPv4 addresses (each octet 0-255) with |||IP_ADDRESS|||."""
    return IPV4_RE.subn(IP_MASK, text)


class PiiMask(DocumentFilter):
    """Mask emails, US phone numbers and IPv4 addresses; the decision counts the masked items per
    type (`counts`, `masked`). A mask already in the text matches none of the patterns, so it is
    never counted again. Never drops a document."""

    name = "pii-mask"

    def decide(self, doc: Document) -> Decision:
        text, counts = doc.text, {}
        # emails first (they may contain digits), then IPs (dotted quads are not phone numbers)
        for on, fn, key in ((self.params["emails"], mask_emails, "EMAIL_ADDRESS"),
                            (self.params["ips"], mask_ips, "IP_ADDRESS"),
                            (self.params["phones"], mask_phone_numbers, "PHONE_NUMBER")):
            if on:
                text, n = fn(text)
                if n:
                    counts[key] = n
        return Decision.keep(text if counts else doc.text, counts=counts)
