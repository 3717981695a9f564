"""PII and secret detectors: precompiled regexes for candidates, then validation.

Every entity type has one finder that yields ``(start, end)`` offsets. Candidates come from
precompiled, backtracking-safe regexes (bounded repeats, lookarounds that only allow a match to
start at a token boundary) and are then validated where a check exists: Luhn (cards), length
table + ISO 7064 mod-97 (IBAN), ``ipaddress`` (IP), Base58Check / BIP-173/350 (Bitcoin), JSON
header (JWT), SSA/Presidio rules (SSN). Phone numbers come from libphonenumber's matcher, run
only on small windows around digit runs. ``Detector.find`` merges everything into sorted,
non-overlapping spans (first start wins, then the longer span, then type priority).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import phonenumbers

from slm.errors import SlmError


@dataclass(frozen=True, slots=True)
class Span:
    """One detected entity: its type and ``[start, end)`` offsets into the input str."""

    type: str
    start: int
    end: int


ENTITY_TYPES: tuple[str, ...] = (
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "MAC_ADDRESS", "US_SSN",
    "CRYPTO_WALLET", "URL_CREDENTIALS", "API_KEY", "PRIVATE_KEY", "JWT", "PASSWORD",
)

# Tie-break for spans with the same extent: secrets, then custom patterns, then the rest
# (checksummed types before the fuzzier ones; PHONE last).
_SECRET_ORDER = ("PRIVATE_KEY", "JWT", "API_KEY", "URL_CREDENTIALS", "PASSWORD")
_REST_ORDER = ("CREDIT_CARD", "IBAN", "CRYPTO_WALLET", "US_SSN", "IP_ADDRESS", "MAC_ADDRESS",
               "EMAIL", "PHONE")
_CUSTOM_RANK = len(_SECRET_ORDER)
_RANK = {name: i for i, name in enumerate(_SECRET_ORDER)}
_RANK.update({name: _CUSTOM_RANK + 1 + i for i, name in enumerate(_REST_ORDER)})

_CUSTOM_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")

Finder = Callable[[str], Iterable[tuple[int, int]]]


class DetectorError(SlmError):
    """The detector configuration is invalid (bad custom pattern, entity or phone region)."""


# --------------------------------------------------------------------------------- EMAIL
# Local part: the common atom characters only. RFC 5322 also allows !#$&'*/=?^`{|} and quoted
# local parts, but in prose and config text those are delimiters ("email=bob@x.org").
# Found from each "@": walk back over at most 64 local-part characters (RFC 5321's limit), then
# match the domain forward, so the cost is bounded per "@" whatever the input.
_EMAIL_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "_%+-.")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)


def _find_email(text: str) -> Iterator[tuple[int, int]]:
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        if at - start <= 64 and _EMAIL_LOCAL.fullmatch(text, start, at):
            domain = _EMAIL_DOMAIN.match(text, at + 1)
            # "ssh://git@host": the user part of a URL, not a mailbox
            if domain and text[max(0, start - 3):start] != "://":
                yield start, domain.end()
        at = text.find("@", at + 1)


# --------------------------------------------------------------------------- CREDIT_CARD
# Contiguous 13-19 digits, or the printed groupings 4-4-4-4(-1..3) and 4-6-4/5 (Amex, Diners)
# with one consistent separator (a single space or dash).
# The "not preceded by" check sits after the first digit: a pattern that starts with a
# character set lets the regex engine skip ahead quickly (about 2.5x faster than a lookbehind).
_CARD = re.compile(
    r"[0-9](?<![\w-][0-9])(?<![0-9][.,][0-9])(?:"
    r"[0-9]{12,18}"
    r"|[0-9]{3}(?P<s1>[ -])[0-9]{4}(?P=s1)[0-9]{4}(?P=s1)[0-9]{4}(?:(?P=s1)[0-9]{1,3})?"
    r"|[0-9]{3}(?P<s2>[ -])[0-9]{6}(?P=s2)[0-9]{4,5}"
    r")(?![\w]|-[0-9]|[.,][0-9])"
)


def validate_luhn(digits: str) -> bool:
    """True when ``digits`` (spaces and dashes ignored) passes the Luhn mod-10 check."""
    digits = digits.replace(" ", "").replace("-", "")
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefix ranges and lengths of the major networks (Visa, Mastercard incl. 2-series,
# Amex, Diners, JCB, Discover, UnionPay, Maestro 5x/6x): a Luhn-valid timestamp such as
# 20100314204946 or an order number outside these is not a card.
_CARD_BRANDS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})), (2221, 2720, frozenset({16})),  # Mastercard
    (34, 34, frozenset({15})), (37, 37, frozenset({15})),  # Amex
    (300, 305, frozenset(range(14, 20))), (36, 36, frozenset(range(14, 20))),  # Diners
    (38, 39, frozenset(range(14, 20))), (3095, 3095, frozenset(range(14, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (50, 50, frozenset(range(12, 20))), (56, 69, frozenset(range(12, 20))),  # Maestro,
)  # Discover (6011, 644-649, 65), UnionPay (62): all inside 56-69


def _card_brand_ok(digits: str) -> bool:
    for low, high, lengths in _CARD_BRANDS:
        prefix = int(digits[:len(str(low))])
        if low <= prefix <= high and len(digits) in lengths:
            return True
    return False


def _find_card(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = m.group().replace(" ", "").replace("-", "")
        if _card_brand_ok(digits) and validate_luhn(digits):
            yield m.span()


# ---------------------------------------------------------------------------------- IBAN
# IBAN length per country code, from the SWIFT IBAN Registry (ISO 13616), release 2024/2025.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

# All uppercase (the printed form) or all lowercase (typed), never mixed case (that is what
# random tokens look like); compact or in groups of 4 split by single spaces.
# The match starts at the check digits (digits are rarer than letters, so the engine skips
# ahead faster); the country code is checked by a lookbehind and added back by the finder.
_IBAN = re.compile(
    r"[0-9](?<=(?<![A-Za-z0-9])[A-Za-z]{2}[0-9])[0-9]"
    r"(?:(?: [A-Z0-9]{4}){2,8}(?: [A-Z0-9]{1,3})?|(?: [a-z0-9]{4}){2,8}(?: [a-z0-9]{1,3})?"
    r"|[A-Z0-9]{11,30}|[a-z0-9]{11,30})"
    r"(?![A-Za-z0-9])"
)


def validate_iban(s: str) -> bool:
    """True for an IBAN with the registry length for its country and mod-97 remainder 1."""
    iban = s.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    if not (iban.isascii() and iban.isalnum()):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _find_iban(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        start = m.start() - 2
        raw = text[start:m.end()]
        want = IBAN_LENGTHS.get(raw[:2].upper())
        if want is None or not (raw.isupper() or raw.islower()):
            continue
        if " " not in raw:
            if len(raw) == want and validate_iban(raw):
                yield start, m.end()
            continue
        # Grouped form: the regex may have run into a following uppercase word; cut at the
        # registry length, which must fall at the end of a group.
        end, count = 0, 0
        while end < len(raw) and count < want:
            count += raw[end] != " "
            end += 1
        if count == want and (end == len(raw) or raw[end] == " ") and validate_iban(raw[:end]):
            yield start, start + end


# ---------------------------------------------------------------------------- IP_ADDRESS
# Candidates never start or end inside a longer dotted/coloned token (1.2.3.4.5, a::b).
_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?![\w]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?![\w:]|\.[0-9])"
)


_HEX_COLON = frozenset(string.hexdigits + ":")
_HEX_COLON_RUN = re.compile(r"[0-9A-Fa-f:]*")
_IPV6_SEPARATORS = re.compile(r"[:.]")
# "section 4.2.3.1", "§4.2.3.2", "version 1.2.3.4": numbering, not an address
_IPV4_NOT_AFTER = re.compile(
    r"(?i:§|\b(?:section|sect?\.|chapter|clause|para(?:graph)?|version|ver\.|v))[ \t]*\Z"
)


def _find_ip(text: str) -> Iterator[tuple[int, int]]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if _IPV4_NOT_AFTER.search(text, max(0, m.start() - 12), m.start()):
                continue
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            yield m.span()
    if "::" in text or text.count(":") >= 7:  # every IPv6 address has one or the other
        yield from _find_ipv6(text)


def _find_ipv6(text: str) -> Iterator[tuple[int, int]]:
    """One attempt per hex/colon token holding a ":", at the token's start."""
    colon = text.find(":")
    while colon != -1:
        start = colon
        while start > 0 and colon - start <= 40 and text[start - 1] in _HEX_COLON:
            start -= 1
        run = _HEX_COLON_RUN.match(text, colon)
        assert run is not None  # the pattern matches the empty string: it always matches
        end = run.end()
        m = _IPV6.match(text, start) if colon - start <= 40 else None
        if m and _valid_ipv6(m.group()):
            yield m.span()
            end = max(end, m.end())
        colon = text.find(":", end)


def _valid_ipv6(cand: str) -> bool:
    # "::" alone, and only one-digit groups ("::2", "1::2": Python slices a[::2], a[1::2]);
    # the loopback "::1" is kept
    if cand != "::1" and max(map(len, _IPV6_SEPARATORS.split(cand))) < 2:
        return False
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- MAC_ADDRESS
# Matches start at the first separator (rarer than hex letters, so the engine skips ahead
# faster); the hex digits before it are checked by a lookbehind and added back by the finder.
_MAC_COLON = re.compile(
    r"(?P<sep>[:-])(?<=(?<![\w:.-])[0-9A-Fa-f]{2}[:-])"
    r"(?:[0-9A-Fa-f]{2}(?P=sep)){4}[0-9A-Fa-f]{2}(?![\w]|[:.-][0-9A-Fa-f])"
)
_MAC_CISCO = re.compile(
    r"\.(?<=(?<![\w:.-])[0-9A-Fa-f]{4}\.)[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![\w]|[:.-][0-9A-Fa-f])"
)


def _find_mac(text: str) -> Iterator[tuple[int, int]]:
    for m in _MAC_COLON.finditer(text):
        yield m.start() - 2, m.end()
    for m in _MAC_CISCO.finditer(text):
        yield m.start() - 4, m.end()


# -------------------------------------------------------------------------------- US_SSN
# ddd-dd-dddd or ddd dd dddd (one delimiter, used twice). Plain 9-digit runs are not matched:
# without a delimiter they are indistinguishable from order numbers, ids and phone numbers.
_SSN = re.compile(
    r"[0-9](?<![\w-][0-9])(?:[0-9]{2}-[0-9]{2}-[0-9]{4}(?![\w]|-[0-9])"
    r"|(?<![0-9] [0-9])[0-9]{2} [0-9]{2} [0-9]{4}(?![\w]| [0-9]))"
)
# Advertising / wallet-insert numbers: Woolworth's 078-05-1120 (SSA), 219-09-9999 (SSA
# pamphlet), 123-45-6789. Presidio's UsSsnRecognizer.invalidate_result rejects the same
# prefixes (000, 666, 123456789, 98765432, 078051120), all-same digits and zero groups.
_SSN_KNOWN_FAKE = frozenset({"078051120", "219099999", "123456789"})


def validate_ssn(s: str) -> bool:
    """True for a structurally valid SSN (``ddd-dd-dddd``, ``ddd dd dddd`` or 9 digits)."""
    if len(s) == 11 and s[3] == s[6] and s[3] in "- ":
        digits = s[:3] + s[4:6] + s[7:]
    elif len(s) == 9:
        digits = s
    else:
        return False
    if not (digits.isascii() and digits.isdigit()):
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(digits)) > 1 and digits not in _SSN_KNOWN_FAKE


def _find_ssn(text: str) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text):
        if validate_ssn(m.group()):
            yield m.span()


# ------------------------------------------------------------------------- CRYPTO_WALLET
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_BASE58_ADDR = re.compile(r"[13](?<![\w][13])[1-9A-HJ-NP-Za-km-z]{25,34}(?![\w])")
_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_ADDR = re.compile(
    r"(?<![\w])(?:(?:bc|tb)1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{6,87}"
    r"|(?:BC|TB)1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{6,87})(?![\w])"
)
_BECH32_CONST, _BECH32M_CONST = 1, 0x2BC830A3
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# Ethereum: EIP-55 mixed-case checksums need Keccak-256, which hashlib lacks (sha3_256 is
# the FIPS variant), so 0x + 40 hex is accepted as a plain pattern, checksum not verified.
_ETH_ADDR = re.compile(r"(?<![\w])0x[0-9a-fA-F]{40}(?![\w])")


def _b58decode(s: str) -> bytes:
    n = 0
    for c in s:
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(s) - len(s.lstrip("1"))) + body


def _valid_base58_address(s: str) -> bool:
    """P2PKH ('1', version 0x00) or P2SH ('3', 0x05) with a valid double-SHA256 checksum."""
    raw = _b58decode(s)
    if len(raw) != 25 or raw[0] != (0x00 if s[0] == "1" else 0x05):
        return False
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


def _bech32_polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _BECH32_GEN[i]
    return chk


def _convert_bits(data: Sequence[int], frombits: int, tobits: int) -> list[int] | None:
    """BIP-173 reference regrouping, without padding (invalid padding -> None)."""
    acc, bits, out, maxv = 0, 0, [], (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if bits >= frombits or (acc << (tobits - bits)) & maxv:
        return None
    return out


def _valid_segwit_address(addr: str) -> bool:
    """BIP-173 (v0, bech32) / BIP-350 (v1-16, bech32m) segwit address with a valid checksum."""
    addr = addr.lower()
    if len(addr) > 90:
        return False
    hrp, data = addr[:2], [_BECH32_CHARSET.index(c) for c in addr[3:]]
    const = _bech32_polymod([ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp] + data)
    version = data[0]
    program = _convert_bits(data[1:-6], 5, 8)
    if version > 16 or program is None or not 2 <= len(program) <= 40:
        return False
    if version == 0:
        return const == _BECH32_CONST and len(program) in (20, 32)
    return const == _BECH32M_CONST


def _find_crypto(text: str) -> Iterator[tuple[int, int]]:
    for m in _BASE58_ADDR.finditer(text):
        if _valid_base58_address(m.group()):
            yield m.span()
    if any(hrp in text for hrp in ("bc1", "tb1", "BC1", "TB1")):
        for m in _BECH32_ADDR.finditer(text):
            if _valid_segwit_address(m.group()):
                yield m.span()
    if "0x" in text:
        for m in _ETH_ADDR.finditer(text):
            yield m.span()


# ----------------------------------------------------------------------- URL_CREDENTIALS
_URL_CREDS = re.compile(
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://"
    r"[^\s:/?#@\"'<>\[\]]*:[^\s/?#@\"'<>]+@[^\s\"'<>]+"
)
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_url(url: str) -> int:
    """Length of ``url`` without trailing sentence punctuation or unbalanced closers."""
    end = len(url)
    while end:
        c = url[end - 1]
        unbalanced = c in _CLOSERS and url.count(_CLOSERS[c], 0, end) < url.count(c, 0, end)
        if c in ".,;:!?" or unbalanced:
            end -= 1
        else:
            break
    return end


def _find_url_credentials(text: str) -> Iterator[tuple[int, int]]:
    if "://" not in text:
        return
    for m in _URL_CREDS.finditer(text):
        yield m.start(), m.start() + _trim_url(m.group())


# ------------------------------------------------------------------------------- API_KEY
# Provider token formats after gitleaks' rule set (github.com/gitleaks/gitleaks, MIT,
# cmd/generate/config/rules/*.go), simplified to the prefix + charset + length shapes.
# One regex per format: each starts with a literal prefix, which the regex engine searches
# for quickly (one alternation of them all is ~3x slower).
_API_KEYS = tuple(re.compile(p + r"(?![A-Za-z0-9_-])") for p in (
    r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",  # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36}",  # GitHub classic / OAuth / user / server / refresh tokens
    r"github_pat_[A-Za-z0-9_]{82}",  # GitHub fine-grained PAT
    r"glpat-[A-Za-z0-9_-]{20}",  # GitLab PAT
    r"xox[baprs]-[A-Za-z0-9-]{10,}",  # Slack
    r"[sr]k_(?:live|test)_[A-Za-z0-9]{20,}",  # Stripe secret / restricted
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-)
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"hf_[A-Za-z]{34}",  # Hugging Face
    r"npm_[A-Za-z0-9]{36}",  # npm
    r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",  # SendGrid
))
# "Bearer <token>" (also inside "Authorization: Bearer ..."): the token only, >= 16 chars and
# holding a digit, so "bearer responsibilities" in prose is not a token.
_BEARER = re.compile(
    r"(?i:(?<![A-Za-z0-9])bearer)[ \t]+([A-Za-z0-9._~+/-]{16,}=*)(?![A-Za-z0-9._~+/=-])"
)
_HAS_DIGIT = re.compile(r"[0-9]")
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "_-")


def _find_api_key(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _API_KEYS:
        for m in pattern.finditer(text):
            if m.start() == 0 or text[m.start() - 1] not in _TOKEN_CHARS:  # not inside a token
                yield m.span()
    if "earer" not in text and "EARER" not in text:
        return
    for m in _BEARER.finditer(text):
        token = m.group(1).rstrip(".")
        if len(token) >= 16 and _HAS_DIGIT.search(token):
            yield m.start(1), m.start(1) + len(token)


# --------------------------------------------------------------------------- PRIVATE_KEY
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# Body of a key whose END line is missing: header lines ("Proc-Type: ...") and whole base64
# lines, separated by real or JSON-escaped newlines; it stops at the first other line (a
# trailing line that is one base64-looking word, "Regards", is taken too). Possessive
# repeats: no backtracking.
_PEM_BODY = re.compile(
    r"(?:(?:[ \t\r\n]|\\[nr])*+"
    r"(?:[A-Za-z0-9+/]++={0,2}+(?=[ \t]*+(?:\r?\n|\\[nr]|\"|\Z))|[A-Z][A-Za-z-]++: [^\r\n\\]*+))*+"
)


def _find_private_key(text: str) -> Iterator[tuple[int, int]]:
    """Whole PEM/OpenSSH/PGP blocks; a BEGIN without END runs to the end of its base64 body."""
    if "PRIVATE KEY" not in text:
        return
    pos, missing_end = 0, set()
    while (m := _PEM_BEGIN.search(text, pos)) is not None:
        label = m.group(1)
        marker = f"-----END {label}-----"
        stop = -1 if label in missing_end else text.find(marker, m.end())
        if stop >= 0:
            end = stop + len(marker)
        else:
            missing_end.add(label)
            body = _PEM_BODY.match(text, m.end())
            end = m.end() + len(body.group().rstrip()) if body else m.end()
        yield m.start(), end
        pos = end


# ----------------------------------------------------------------------------------- JWT
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
)


def _jwt_header_ok(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError included
        return False
    return isinstance(header, dict) and "alg" in header


def _find_jwt(text: str) -> Iterator[tuple[int, int]]:
    if "eyJ" not in text:
        return
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield m.span()


# ------------------------------------------------------------------------------ PASSWORD
# Found from each assignment operator (= : := =>): the key name must end right before it
# (case-insensitive; it may be the last part of a longer name: DB_PASSWORD, my-secret, with an
# optional closing quote), then comes a quoted or bare value.
_ASSIGN = re.compile(r":=|=>|=(?!=)|:(?![:/])")
_KEY_BEFORE = re.compile(
    r"(?P<key>(?i:password|passwd|passphrase"  # also glued: PGPASSWORD, MYSQLPASSWD
    r"|(?<![A-Za-z0-9])(?:pwd|pass|client_secret|secret"
    r"|(?:secret|access|private)[_-]?key|api[_-]?key|access_token|auth_token|token)))"
    r"[\"']?[ \t]*\Z"
)
_KEY_LOOKBACK = 48
_KEY_LAST_CHARS = frozenset("destnyDESTNY")  # the last letters of the key names above
_VALUE = re.compile(
    r"[ \t]*(?:\"(?P<dq>(?:[^\"\\\r\n]|\\.){1,1024})\""
    r"|'(?P<sq>(?:[^'\\\r\n]|\\.){1,1024})'"
    r"|(?P<bare>[^\s\"',;(){}\[\]<>]{1,1024}))"
)
_NOT_SECRETS = frozenset({
    "null", "none", "nil", "true", "false", "undefined", "empty", "redacted", "masked",
    "hidden", "omitted", "removed", "n/a", "[redacted]", "[filtered]",
    # type annotations: "secret: bool = False", "token: string"
    "bool", "boolean", "bytes", "float", "string", "number", "object", "optional",
})
_MASKED = re.compile(r"[*xX•#.\-_]+")
_PLACEHOLDER = re.compile(
    r"\$\{[^}]*\}|\{\{.*\}\}|<[^<>]*>|%\([^)]*\)s|\$[A-Za-z_][A-Za-z0-9_]*|%[A-Za-z_]+%"
)
# self.password, os.environ, settings.DB_PASSWORD2: dotted identifiers (digits only at the end
# of a part), so "ya29.a0AfH6SM..." still counts as a value.
_CODE_REF = re.compile(r"[A-Za-z_]+[0-9]*(?:\.[A-Za-z_]+[0-9]*)+")
# value_str, TOKEN_BLOCK_BEGIN: snake_case / CONSTANT_CASE names (letters only), not values
_IDENTIFIER = re.compile(r"[a-z]+(?:_[a-z]+)+|[A-Z]+(?:_[A-Z]+)+")
_QUERY_NEXT = re.compile(r"&[A-Za-z_][A-Za-z0-9_.\[\]-]*=")  # "&user=": the next query parameter
_WORD_AFTER = re.compile(r"[ \t]+[A-Za-z]")


def _password_value_ok(value: str, bare: bool, text: str, end: int) -> bool:
    """Drop empty/placeholder/masked values, code references and prose ("Password: must...")."""
    if len(value) < 4 or value.lower() in _NOT_SECRETS:
        return False
    if _MASKED.fullmatch(value) or _PLACEHOLDER.fullmatch(value):
        return False
    if "-----BEGIN " in value:  # a PEM block: PRIVATE_KEY reports it
        return False
    if bare:
        if _CODE_REF.fullmatch(value) or _IDENTIFIER.fullmatch(value):
            return False
        if text[end:end + 1] in ("(", "["):
            return False
        if value.isalpha() and _WORD_AFTER.match(text, end):
            return False
    return True


def _find_password(text: str) -> Iterator[tuple[int, int]]:
    for op in _ASSIGN.finditer(text):
        before = text[max(0, op.start() - 16):op.start()].rstrip(" \t\"'")
        if not before or before[-1] not in _KEY_LAST_CHARS:  # cheap: no key name ends here
            continue
        if op.group() == ":" and text[op.start() - 1:op.start()] in (" ", "\t"):
            continue  # "pass :data:" - a colon after a space is prose, not "key: value"
        key = _KEY_BEFORE.search(text, max(0, op.start() - _KEY_LOOKBACK), op.start())
        if key is None:
            continue
        m = _VALUE.match(text, op.end())
        if m is None:
            continue
        group = "dq" if m.group("dq") is not None else "sq" if m.group("sq") is not None else "bare"
        start, end = m.span(group)
        if group == "bare" and (cut := _QUERY_NEXT.search(text, start, end)):
            end = cut.start()
        at_break = end == len(text) or text[end].isspace()
        if group == "bare" and text[end - 1] == "." and at_break:
            end -= 1  # sentence punctuation after a bare value
        value = text[start:end]
        if group == "bare" and value.lower().endswith(key.group("key").lower()):
            continue  # "self.bos_token = bos_token": a variable named like the key
        if _password_value_ok(value, group == "bare", text, end):
            yield start, end


# --------------------------------------------------------------------------------- PHONE
# libphonenumber's matcher costs ~40 us per call and region, ~1 s/MB per region on digit-heavy
# prose, and gives up after 65535 candidates. So it only looks at windows around plausible
# digit runs: up to 8 blocks joined by one separator ("-", ".", "/", "(", ")", a space, or
# punctuation + space), 7-17 digits in all, at most 2 one-digit blocks. Runs outside that
# shape (tables of numbers, "1 2 3 4 ...", long digit strings) are not looked at.
_PHONE_RUN = re.compile(
    r"(?<![0-9])[0-9]{1,17}"
    r"(?:(?:[().\-/][ \t\u00a0]?|[ \t\u00a0][(\-]?)[0-9]{1,17}){0,7}"
    r"(?![0-9])"
)
_PHONE_BLOCK = re.compile(r"[0-9]+")
# Runs the matcher would reject anyway, skipped before paying for it: a leading date
# (2024-03-15, 15/01/2024, 03.15.24; the rest of the run is still considered), an SSN layout
# (US_SSN decides) or a dotted quad (IP_ADDRESS decides).
_DAY, _MONTH = r"(?:0?[1-9]|[12][0-9]|3[01])", r"(?:0?[1-9]|1[0-2])"
_DATE_PREFIX = re.compile(
    rf"(?:(?:19|20)[0-9]{{2}}(?P<a>[-/.]){_MONTH}(?P=a){_DAY}(?!(?P=a)?[0-9])"
    rf"|{_DAY}(?P<b>[-/.]){_MONTH}(?P=b)(?:19|20)?[0-9]{{2}}(?!(?P=b)?[0-9])"
    rf"|{_MONTH}(?P<c>[-/.]){_DAY}(?P=c)(?:19|20)?[0-9]{{2}}(?!(?P=c)?[0-9]))"
    r"[ \t\u00a0().\-/]*"
)
_SKIP_RUN = re.compile(r"[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}|[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_LEAD_CHARS = "+([ \t"  # what may precede the digits inside a phone number: "+1", "(650)"
_WINDOW_AHEAD = 24  # room for an extension (" ext. 1234") and the character after it


def _is_card_run(text: str, start: int, end: int) -> bool:
    if not _CARD.fullmatch(text, start, end):
        return False
    digits = text[start:end].replace(" ", "").replace("-", "")
    return _card_brand_ok(digits) and validate_luhn(digits)


def _phone_windows(text: str) -> list[tuple[int, int, bool]]:
    """One window per plausible digit run: the run, its lead characters ("+", "(") and one
    character of context before, and ``_WINDOW_AHEAD`` characters after.

    Windows may overlap: a window cut inside the next run can only yield a shorter number
    starting where that run's own window finds the whole one (the longer span wins). The
    flag is True after a "+": an international number parses the same whatever the default
    region, so one region is enough.
    """
    windows: list[tuple[int, int, bool]] = []
    for m in _PHONE_RUN.finditer(text):
        run_start, run_end = m.span()
        if date := _DATE_PREFIX.match(text, run_start, run_end):
            run_start = date.end()
        if run_start == run_end or _SKIP_RUN.fullmatch(text, run_start, run_end):
            continue
        blocks = _PHONE_BLOCK.findall(text, run_start, run_end)
        digits = sum(map(len, blocks))
        if not 7 <= digits <= 17 or sum(len(b) == 1 for b in blocks) > 2:
            continue
        plus = run_start > 0 and text[run_start - 1] == "+"
        if not plus and _is_card_run(text, run_start, run_end):
            continue  # CREDIT_CARD's span would cover any phone number found inside it
        start = run_start
        while start > 0 and run_start - start < 3 and text[start - 1] in _LEAD_CHARS:
            start -= 1
        windows.append((max(0, start - 1), min(len(text), run_end + _WINDOW_AHEAD), plus))
    return windows


# ddd-dd-dddd / ddd dd dddd is the SSN layout (US_SSN decides); libphonenumber's DE and FR
# rules accept many such digit strings as national numbers.
_SSN_SHAPE = re.compile(r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}")
_PHONE_CORE = re.compile(r"[^A-Za-z#;]*")
_DECIMAL = re.compile(r"[(\[]*-?[0-9]+\.[0-9]+")  # 0.28613933, [-1.5: numbers, not phones


def _not_a_phone(text: str, start: int, end: int) -> bool:
    """libphonenumber accepts these, but in running text they are something else."""
    raw = text[start:end]
    if _SSN_SHAPE.fullmatch(raw) or _DECIMAL.fullmatch(raw) or raw.lstrip("([").startswith("-"):
        return True
    match = _PHONE_CORE.match(raw)
    assert match is not None  # the pattern matches the empty string: it always matches
    core = match.group().rstrip()  # without an extension ("ext. 123")
    if "." in core and (" " in core or core.count(".") == 1):  # "0.5.25 20010319", "12.3456789"
        return True
    before, before2 = text[start - 1:start], text[start - 2:start - 1]
    after, after2 = text[end:end + 1], text[end + 1:end + 2]
    # glued into an identifier (SN-2024-000123-XY) or a decimal number (6.16484065)
    if (before in "-_" and before2.isalnum()) or (after in "-_" and after2.isalnum()):
        return True
    return (before in ".," and before2.isdigit()) or (after in ".," and after2.isdigit())


def _phone_finder(regions: Sequence[str]) -> Finder:
    def find(text: str) -> Iterator[tuple[int, int]]:
        seen: set[tuple[int, int]] = set()
        for w_start, w_end, international in _phone_windows(text):
            window = text[w_start:w_end]
            for region in regions[:1] if international else regions:
                leniency = phonenumbers.Leniency.VALID
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency):
                    span = (w_start + match.start, w_start + match.end)
                    if span not in seen and not _not_a_phone(text, *span):
                        seen.add(span)
                        yield span
    return find


# -------------------------------------------------------------------------------- CUSTOM
_EMPTY_PROBES = ("", "a", "A", "0", " ", "_", "-", ".", "@", "aA0_ -.@/:\n", "\n")


def _compile_custom(name: str, pattern: str) -> re.Pattern[str]:
    if not isinstance(name, str) or not _CUSTOM_NAME.fullmatch(name):
        raise DetectorError(
            f"custom entity name {name!r} is invalid",
            hint="use 1-32 characters: an uppercase letter, then A-Z, 0-9 or _",
        )
    if name in ENTITY_TYPES:
        raise DetectorError(f"custom entity {name} clashes with the built-in entity type")
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise DetectorError(f"custom entity {name}: invalid regex {pattern!r}: {exc}") from None
    if any(m.end() == m.start() for probe in _EMPTY_PROBES for m in compiled.finditer(probe)):
        raise DetectorError(
            f"custom entity {name}: the pattern {pattern!r} matches the empty string",
            hint="a pattern must consume at least one character",
        )
    return compiled


def _custom_finder(pattern: re.Pattern[str]) -> Finder:
    """The whole match, or group 1 when the pattern has exactly one capturing group."""
    group = 1 if pattern.groups == 1 else 0

    def find(text: str) -> Iterator[tuple[int, int]]:
        for m in pattern.finditer(text):
            start, end = m.span(group)
            if end > start:  # zero-length (or non-participating) matches are skipped
                yield start, end
    return find


_BUILTIN_FINDERS: dict[str, Finder] = {
    "EMAIL": _find_email,
    "CREDIT_CARD": _find_card,
    "IBAN": _find_iban,
    "IP_ADDRESS": _find_ip,
    "MAC_ADDRESS": _find_mac,
    "US_SSN": _find_ssn,
    "CRYPTO_WALLET": _find_crypto,
    "URL_CREDENTIALS": _find_url_credentials,
    "API_KEY": _find_api_key,
    "PRIVATE_KEY": _find_private_key,
    "JWT": _find_jwt,
    "PASSWORD": _find_password,
}


class Detector:
    """Finds entities of the configured types in text.

    ``entities`` selects built-in types (custom names are accepted there too; custom patterns
    are always on). ``custom`` maps a new entity name to a regex; its span is the whole match,
    or group 1 when the pattern has exactly one capturing group.
    """

    def __init__(
        self,
        entities: Iterable[str] = ENTITY_TYPES,
        *,
        phone_regions: Sequence[str] = ("US", "GB", "DE", "FR"),
        custom: Mapping[str, str] = {},  # noqa: B006 - read only, never mutated
    ) -> None:
        customs = {name: _compile_custom(name, pattern) for name, pattern in custom.items()}
        wanted = list(dict.fromkeys(entities))
        for name in wanted:
            if name not in ENTITY_TYPES and name not in customs:
                raise DetectorError(
                    f"unknown entity type {name!r}", hint=f"known: {', '.join(ENTITY_TYPES)}"
                )
        regions = _check_regions(phone_regions, required="PHONE" in wanted)
        self._finders: list[tuple[str, int, Finder]] = []
        for name in ENTITY_TYPES:
            if name not in wanted:
                continue
            if name == "PHONE":
                finder = _phone_finder(regions)
            else:
                finder = _BUILTIN_FINDERS[name]
            self._finders.append((name, _RANK[name], finder))
        for name, compiled in customs.items():
            self._finders.append((name, _CUSTOM_RANK, _custom_finder(compiled)))
        self.entities: tuple[str, ...] = tuple(name for name, _, _ in self._finders)

    def find(self, text: str) -> list[Span]:
        """All entities in ``text``, sorted by start and non-overlapping."""
        candidates = [
            (start, start - end, rank, name, end)
            for name, rank, finder in self._finders
            for start, end in finder(text)
            if end > start
        ]
        candidates.sort()
        spans: list[Span] = []
        last_end = 0
        for start, _, _, name, end in candidates:
            if start >= last_end:
                spans.append(Span(name, start, end))
                last_end = end
        return spans


def _check_regions(regions: Sequence[str], *, required: bool) -> tuple[str, ...]:
    """Upper-cased, de-duplicated region codes known to libphonenumber."""
    if isinstance(regions, str):
        regions = (regions,)
    checked = tuple(dict.fromkeys(str(r).upper() for r in regions))
    if required and not checked:
        raise DetectorError("PHONE is enabled but phone_regions is empty",
                            hint="name at least one region, e.g. US")
    unknown = [r for r in checked if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise DetectorError(
            f"unknown phone region(s): {', '.join(unknown)}",
            hint="use ISO 3166-1 alpha-2 codes supported by libphonenumber, e.g. US, GB, DE",
        )
    return checked
