"""The PII/secret detectors: validators, each entity type, overlaps, config errors, corpus score."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from slm.errors import SlmError
from slm.sanitise.detectors import (
    ENTITY_TYPES,
    IBAN_LENGTHS,
    Detector,
    DetectorError,
    Span,
    validate_iban,
    validate_luhn,
    validate_ssn,
)
from support.pii_corpus import CORPUS, score_corpus

JWT_IO = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9l"
          "IiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
GENESIS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
P2SH = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
HF_TOKEN = "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"  # from gitleaks' rule tests
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


def found(detector: Detector, text: str) -> list[tuple[str, str]]:
    return [(s.type, text[s.start:s.end]) for s in detector.find(text)]


# ------------------------------------------------------------------------- interface
def test_interface() -> None:
    assert ENTITY_TYPES == (
        "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "MAC_ADDRESS", "US_SSN",
        "CRYPTO_WALLET", "URL_CREDENTIALS", "API_KEY", "PRIVATE_KEY", "JWT", "PASSWORD")
    span = Span("EMAIL", 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        span.start = 3  # type: ignore[misc]
    assert not hasattr(span, "__dict__")
    assert issubclass(DetectorError, SlmError)
    assert Detector().find("") == []


# ------------------------------------------------------------------------ validators
@pytest.mark.parametrize("number", [
    "4111111111111111", "4012888888881881", "5555555555554444", "2223003122003222",
    "378282246310005", "6011111111111117", "3530111333300000", "30569309025904",
    "4111 1111 1111 1111", "4111-1111-1111-1111",
])
def test_luhn_valid(number: str) -> None:
    assert validate_luhn(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "", "4", "41x1"])
def test_luhn_invalid(number: str) -> None:
    assert not validate_luhn(number)


@pytest.mark.parametrize("iban", [
    "DE89370400440532013000", "GB82WEST12345698765432", "FR1420041010050500013M02606",
    "NL91ABNA0417164300", "BE68539007547034", "NO9386011117947", "DE89 3704 0044 0532 0130 00",
    "de89370400440532013000",
])
def test_iban_valid(iban: str) -> None:
    assert validate_iban(iban)


@pytest.mark.parametrize("iban", [
    "DE89370400440532013001",  # check digits
    "GB82WEST1234569876543",  # one character short
    "ZZ12345678901234567890",  # no such country
    "DE8937040044053201300!",
    "",
])
def test_iban_invalid(iban: str) -> None:
    assert not validate_iban(iban)


def test_iban_registry_table() -> None:
    assert len(IBAN_LENGTHS) >= 85
    assert IBAN_LENGTHS["DE"] == 22 and IBAN_LENGTHS["NO"] == 15 and IBAN_LENGTHS["LC"] == 32


@pytest.mark.parametrize("ssn", ["078-05-1123", "078 05 1123", "078051123"])
def test_ssn_valid(ssn: str) -> None:
    assert validate_ssn(ssn)


@pytest.mark.parametrize("ssn", [
    "000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456", "078-00-1123", "078-05-0000",
    "111-11-1111", "123-45-6789", "078-05-1120", "219-09-9999", "078-05 1123", "078.05.1123",
    "07805112", "abc-de-fghi",
])
def test_ssn_invalid(ssn: str) -> None:
    assert not validate_ssn(ssn)


# ---------------------------------------------------------------- each type: positives
POSITIVES = [
    ("EMAIL", "Write to alice@example.com today.", "alice@example.com"),
    ("EMAIL", "From: <bob.smith+tag@mail.example.org>", "bob.smith+tag@mail.example.org"),
    ("PHONE", "Call +1 650-253-0000 now.", "+1 650-253-0000"),
    ("PHONE", "Ring 020 7946 0018 please.", "020 7946 0018"),
    ("PHONE", "Paris : 01 23 45 67 89.", "01 23 45 67 89"),
    ("PHONE", "Berlin 030 123456.", "030 123456"),
    ("PHONE", "x (650) 253-0000 ext. 123", "(650) 253-0000 ext. 123"),
    ("CREDIT_CARD", "Card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "Amex 3782 822463 10005.", "3782 822463 10005"),
    ("CREDIT_CARD", "Discover 6011-1111-1111-1117.", "6011-1111-1111-1117"),
    ("CREDIT_CARD", "MC 2223003122003222", "2223003122003222"),
    ("IBAN", "IBAN DE89 3704 0044 0532 0130 00 thanks", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "Pay GB82WEST12345698765432.", "GB82WEST12345698765432"),
    ("IBAN", "Belgian BE68 5390 0754 7034 INFO", "BE68 5390 0754 7034"),
    ("IBAN", "typed de89370400440532013000 here", "de89370400440532013000"),
    ("IP_ADDRESS", "host 192.0.2.1:443", "192.0.2.1"),
    ("IP_ADDRESS", "v6 2001:db8::1 up", "2001:db8::1"),
    ("IP_ADDRESS", "mapped ::ffff:192.0.2.128 seen", "::ffff:192.0.2.128"),
    ("IP_ADDRESS", "http://[2001:db8::2]:8080/", "2001:db8::2"),
    ("MAC_ADDRESS", "nic 00-00-5E-00-53-00 ok", "00-00-5E-00-53-00"),
    ("MAC_ADDRESS", "ether 00:00:5e:00:53:af brd", "00:00:5e:00:53:af"),
    ("MAC_ADDRESS", "cisco 0000.5e00.5301 port", "0000.5e00.5301"),
    ("US_SSN", "SSN 078-05-1123 on file", "078-05-1123"),
    ("US_SSN", "SSN 078 05 1123 on file", "078 05 1123"),
    ("CRYPTO_WALLET", f"to {GENESIS}.", GENESIS),
    ("CRYPTO_WALLET", f"p2sh {P2SH}", P2SH),
    ("CRYPTO_WALLET", "eth 0x742d35Cc6634C0532925a3b844Bc454e4438f44e",
     "0x742d35Cc6634C0532925a3b844Bc454e4438f44e"),
    ("URL_CREDENTIALS", "db postgres://admin:s3cr3t@db.example.com:5432/app.",
     "postgres://admin:s3cr3t@db.example.com:5432/app"),
    ("URL_CREDENTIALS", "(redis://:hunter22@cache.example.net:6379/0)",
     "redis://:hunter22@cache.example.net:6379/0"),
    ("API_KEY", "key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("API_KEY", "gh ghp_" + "a1" * 18, "ghp_" + "a1" * 18),
    ("API_KEY", "gl glpat-" + "x_Y-" * 5, "glpat-" + "x_Y-" * 5),
    ("API_KEY", "stripe sk_test_4eC39HqLyjWDarjtT1zdp7dc", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
    ("API_KEY", "oa sk-proj-" + "Ab3_" * 10, "sk-proj-" + "Ab3_" * 10),
    ("API_KEY", "an sk-ant-api03-" + "Zz9-" * 10, "sk-ant-api03-" + "Zz9-" * 10),
    ("API_KEY", f"hf {HF_TOKEN}", HF_TOKEN),
    ("API_KEY", "Authorization: Bearer 0a1b2c3d4e5f6a7b8c9d", "0a1b2c3d4e5f6a7b8c9d"),
    ("PRIVATE_KEY", f"k:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n"
     "-----END RSA PRIVATE KEY-----\nbye",
     f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"),
    ("PRIVATE_KEY", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n"
     "-----END OPENSSH PRIVATE KEY-----",
     f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----"),
    ("PRIVATE_KEY", f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{PEM_BODY}\n"
     "-----END PGP PRIVATE KEY BLOCK-----",
     f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{PEM_BODY}\n-----END PGP PRIVATE KEY BLOCK-----"),
    ("JWT", f"token {JWT_IO} end", JWT_IO),
    ("PASSWORD", "password=hunter22", "hunter22"),
    ("PASSWORD", 'cfg {"password": "p@ss w0rd", "u": 1}', "p@ss w0rd"),
    ("PASSWORD", "DB_PASSWORD=Tr0ub4dor&3", "Tr0ub4dor&3"),
    ("PASSWORD", "url?user=x&password=abc12345&next=1", "abc12345"),
    ("PASSWORD", "PGPASSWORD=pgpass99 psql", "pgpass99"),
    ("PASSWORD", "client_secret: 'abcDEF123456'", "abcDEF123456"),
    ("PASSWORD", "secret: 7f3a9c2e1b.", "7f3a9c2e1b"),
]


@pytest.mark.parametrize(("kind", "text", "value"), POSITIVES)
def test_positive(detector: Detector, kind: str, text: str, value: str) -> None:
    assert (kind, value) in found(detector, text)


@pytest.mark.parametrize("address", [  # BIP-350 valid test vectors (incl. BIP-173 v0 ones)
    "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
    "BC1SW50QGDZ25J",
    "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs",
    "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
    "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
])
def test_segwit_valid(detector: Detector, address: str) -> None:
    assert found(detector, f"pay {address} now") == [("CRYPTO_WALLET", address)]


@pytest.mark.parametrize("address", [  # BIP-350 invalid vectors, and BIP-173 v1+ (bech32)
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",  # hrp
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # bech32 for v1
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",  # bech32 for v2
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # bech32 for v16
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # bech32m for v0
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # checksum
    "bc1rw5uspcuh",  # program too short
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program length 16
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",  # BIP-173 v1
    "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj",  # BIP-173 v2 (bech32, now invalid)
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",  # mixed case
])
def test_segwit_invalid(detector: Detector, address: str) -> None:
    assert found(detector, f"pay {address} now") == []


# ---------------------------------------------------------------- each type: negatives
NEGATIVES = [
    "user@localhost and user@example.c and @example.com and user@.example.com",
    "@pytest.mark.timeout(20) and package@1.2.3",
    "clone ssh://git@example.com/repo.git",  # URL user part, no password
    "on 2024-01-15 10:30 order 12345678, ISBN 978-3-16-148410-0, unix 1700000000",
    "ref SN-2024-000123-XY and values 0.28613933, 6.16484065",
    "4111 1111 1111 1112 and 41111111111111110000 and 4111-1111 1111-1111",
    "timestamp 20100314204946 and 0.3534857623790153",
    "DE89370400440532013001 and GB82WEST1234569876543 and ZZ12345678901234567890",
    "De89370400440532013000 is mixed case",
    "1.2.3.4.5 and 999.1.1.1 and 256.256.256.256 and 10.0.19045 and 12:30:45",
    "std::vector and Foo::Bar and a :: b and a[::2], b[1::2], c[::-1]",
    "per RFC 5891 §4.2.3.2 and section 4.2.3.1",
    "00:00:5E:00:53 and 00:00-5E:00:53:01",
    "078-05-1120 219-09-9999 123-45-6789 000-12-3456 666-12-3456 901-12-3456 078-00-1123",
    "078-05-0000 111-11-1111 078-05 1123 536221234",
    "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb 3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLz",
    "tx 0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060 and 0xdeadbeef",
    "https://example.com:8080/path?user=bob",
    "ghp_short sk-learn AKIA1234 myghp_" + "a1" * 18 + " task-force",
    "The bearer responsibilities clause; Bearer of bad news",
    "-----BEGIN CERTIFICATE-----\n" + PEM_BODY + "\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\n" + PEM_BODY + "\n-----END PUBLIC KEY-----",
    "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",  # header without "alg"
    "eyJfoo.eyJbar.baz",
    'password: null, password=${DB_PASSWORD}, password: "", password: ********',
    "password: <your-password-here>, token: [REDACTED]",
    "Reset your password: click the link. Password: must be long.",
    "The password is long and the secret is safe. bypass=abcdef",
    "password = os.environ['DB_PASSWORD']\npassword=getpass()\nself.token = token",
    "max_tokens: 256, tokens: 1000; if password == expected: pass",
    "secret: bool = False\ntoken = TOKEN_BLOCK_BEGIN\ntoken = value_str",
    "implementing a client, pass :data:`h11.CLIENT`",
    "The committee met on 2024-01-15 and approved 3 of the 7 proposals; #1e90ff.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_negative(detector: Detector, text: str) -> None:
    assert found(detector, text) == []


def test_plain_nine_digits_are_not_ssn() -> None:
    # (078051123 is still a valid German phone number for libphonenumber)
    assert Detector(["US_SSN"]).find("ssn 078051123") == []


def test_ssn_not_reported_as_phone(detector: Detector) -> None:
    # libphonenumber's DE rules accept 078-05-1120; the SSN layout belongs to US_SSN
    assert found(detector, "sample 078-05-1120 here") == []


def test_truncated_private_key_runs_to_end_of_body(detector: Detector) -> None:
    text = f"paste:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n\nThanks, Bob"
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}"
    assert found(detector, text) == [("PRIVATE_KEY", key)]


def test_json_escaped_private_key(detector: Detector) -> None:
    body = PEM_BODY.replace("\n", "\\n")
    key = f"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----"
    text = f'{{"private_key": "{key}\\n", "x": 1}}'
    assert found(detector, text) == [("PRIVATE_KEY", key)]
    truncated = f'{{"private_key": "-----BEGIN PRIVATE KEY-----\\n{body}'
    assert found(detector, truncated) == [("PRIVATE_KEY", truncated[17:])]


def test_jwt_alg_none_and_bearer(detector: Detector) -> None:
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    assert found(detector, f"t={unsigned} x") == [("JWT", unsigned)]
    assert found(detector, f"Authorization: Bearer {JWT_IO}") == [("JWT", JWT_IO)]


def test_phone_regions() -> None:
    gb_only = Detector(["PHONE"], phone_regions=["gb"])
    assert found(gb_only, "US office (201) 555-0123.") == []
    assert found(gb_only, "US office +1 201-555-0123.") == [("PHONE", "+1 201-555-0123")]
    assert found(gb_only, "London 020 7946 0018.") == [("PHONE", "020 7946 0018")]
    fr = Detector(["PHONE"], phone_regions=("FR",))
    assert found(fr, "Paris 01 23 45 67 89.") == [("PHONE", "01 23 45 67 89")]


def test_entity_selection() -> None:
    only_email = Detector(["EMAIL"])
    assert only_email.entities == ("EMAIL",)
    assert found(only_email, "a@example.com 4111111111111111") == [("EMAIL", "a@example.com")]
    assert Detector([], phone_regions=()).find("a@example.com") == []


# ------------------------------------------------------------------------- overlaps
def test_earlier_start_wins(detector: Detector) -> None:
    text = "see https://bob:pw1234@example.com/x"
    assert found(detector, text) == [("URL_CREDENTIALS", "https://bob:pw1234@example.com/x")]


def test_longer_span_wins_on_equal_start() -> None:
    d = Detector([], phone_regions=(), custom={"SHORT": r"abc", "LONG": r"abcdef"})
    assert found(d, "xx abcdef yy") == [("LONG", "abcdef")]


def test_equal_extent_priority(detector: Detector) -> None:
    # secret beats the rest: the value is also a card number
    assert found(detector, "password=4111111111111111") == [("PASSWORD", "4111111111111111")]
    # JWT beats API_KEY (the bearer token is the same span)
    assert found(detector, f"Bearer {JWT_IO}") == [("JWT", JWT_IO)]
    custom = Detector(custom={"CONTACT": r"alice@example\.com", "PW": r"hunter22"})
    # custom beats the rest, a secret beats custom
    assert found(custom, "mail alice@example.com") == [("CONTACT", "alice@example.com")]
    assert found(custom, "password=hunter22") == [("PASSWORD", "hunter22")]


def test_spans_sorted_and_disjoint(detector: Detector) -> None:
    text = CORPUS.read_text()
    spans = detector.find(text)
    assert len(spans) > 150
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))
    assert all(s.start < s.end for s in spans)


# --------------------------------------------------------------------------- custom
def test_custom_whole_match_and_group() -> None:
    d = Detector([], phone_regions=(), custom={
        "EMPLOYEE_ID": r"EMP-\d{6}",
        "TICKET": r"ticket #(\d+)",
        "TWO_GROUPS": r"(ab)(cd)",
    })
    text = "EMP-123456 filed ticket #42 about abcd"
    assert found(d, text) == [("EMPLOYEE_ID", "EMP-123456"), ("TICKET", "42"),
                              ("TWO_GROUPS", "abcd")]


def test_custom_zero_length_runtime_matches_skipped() -> None:
    d = Detector([], phone_regions=(), custom={"LOOK": r"(?=x)|yz"})
    assert found(d, "x yz") == [("LOOK", "yz")]


@pytest.mark.parametrize(("custom", "words"), [
    ({"bad name": "x"}, "'bad name' is invalid"),
    ({"lower": "x"}, "'lower' is invalid"),
    ({"A" * 33: "x"}, "is invalid"),
    ({"EMAIL": "x"}, "EMAIL clashes"),
    ({"BROKEN": "(unclosed"}, "BROKEN: invalid regex"),
    ({"EMPTY": "a*"}, "EMPTY: the pattern 'a*' matches the empty string"),
    ({"EMPTY": r"\b"}, "matches the empty string"),
    ({"EMPTY": ""}, "matches the empty string"),
])
def test_custom_errors(custom: dict[str, str], words: str) -> None:
    with pytest.raises(DetectorError) as err:
        Detector(custom=custom)
    assert words in err.value.message


def test_config_errors() -> None:
    with pytest.raises(DetectorError) as err:
        Detector(["EMAIL", "PASSPORT"])
    assert "unknown entity type 'PASSPORT'" in err.value.message
    assert "EMAIL" in (err.value.hint or "")
    with pytest.raises(DetectorError) as err:
        Detector(phone_regions=("US", "XX"))
    assert "unknown phone region(s): XX" in err.value.message
    with pytest.raises(DetectorError) as err:
        Detector(phone_regions=())
    assert "phone_regions is empty" in err.value.message
    assert Detector(["EMAIL"], phone_regions=()).entities == ("EMAIL",)
    # custom names may be listed in entities
    assert Detector(["EMAIL", "ORDER"], custom={"ORDER": r"ORD-\d+"}).entities == (
        "EMAIL", "ORDER")


# ----------------------------------------------------------- pathological inputs
MB = 1_000_000


@pytest.mark.timeout(20)
@pytest.mark.parametrize("unit", [
    "a@", "1234567890", "1 ", "a.", "a:", "password=", "token: '", "4111 ", "1.", "00:",
    "a://b:c", "-----BEGIN RSA PRIVATE KEY-----\n", "eyJhbGc.", "::", "Bearer ", "DE89 ",
])
def test_no_catastrophic_backtracking(detector: Detector, unit: str) -> None:
    """~1 MB of a repeated unit: linear scans take ~1 s, anything quadratic takes hours."""
    detector.find(unit * (MB // len(unit)))


# --------------------------------------------------------------------------- corpus
def test_corpus_is_well_formed() -> None:
    lines = CORPUS.read_text().splitlines()
    assert len(lines) >= 150
    per_type: Counter[str] = Counter()
    for line in lines:
        record = json.loads(line)
        for e in record["entities"]:
            assert e["type"] in ENTITY_TYPES
            assert 0 <= e["start"] < e["end"] <= len(record["text"])
            per_type[e["type"]] += 1
    assert all(per_type[t] >= 3 for t in ENTITY_TYPES), per_type
    assert sum(1 for line in lines if not json.loads(line)["entities"]) >= 50  # negatives


def test_corpus_precision_recall(detector: Detector) -> None:
    tp, fp, fn = score_corpus(detector)
    for t in ENTITY_TYPES:
        p = tp[t] / ((tp[t] + fp[t]) or 1)
        r = tp[t] / ((tp[t] + fn[t]) or 1)
        print(f"{t:16s} tp={tp[t]:3d} fp={fp[t]:2d} fn={fn[t]:2d} precision={p:.3f} recall={r:.3f}")
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    precision = total_tp / (total_tp + total_fp)
    recall = total_tp / (total_tp + total_fn)
    print(f"overall precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.97
    assert recall >= 0.95
