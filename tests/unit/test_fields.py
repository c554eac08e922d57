"""Field checks as pure rules: text that could break an e-mail header or spoof a statement, one
e-mail address per field, and text fitted to a bounded column."""

from __future__ import annotations

import pytest

from shared import fields
from shared.errors import InvalidInput

UNSAFE_CHARACTERS = {
    "line separator U+2028": "\u2028",
    "paragraph separator U+2029": "\u2029",
    "next line U+0085": "\u0085",
    "carriage return": "\r",
    "line feed": "\n",
    "tab": "\t",
    "nul": "\x00",
    "escape": "\x1b",
    "delete": "\x7f",
    "C1 control U+009B": "\x9b",
    "left-to-right embedding U+202A": "\u202a",
    "right-to-left embedding U+202B": "\u202b",
    "pop directional formatting U+202C": "\u202c",
    "left-to-right override U+202D": "\u202d",
    "right-to-left override U+202E": "\u202e",
    "left-to-right isolate U+2066": "\u2066",
    "right-to-left isolate U+2067": "\u2067",
    "first strong isolate U+2068": "\u2068",
    "pop directional isolate U+2069": "\u2069",
    "left-to-right mark U+200E": "\u200e",
    "right-to-left mark U+200F": "\u200f",
    "zero-width space U+200B": "\u200b",
    "byte order mark U+FEFF": "\ufeff",
    "soft hyphen U+00AD": "\u00ad",
    "word joiner U+2060": "\u2060",
    "tag character U+E0041": "\U000e0041",
    "lone surrogate": "\ud800",
}


@pytest.mark.parametrize("character", UNSAFE_CHARACTERS.values(), ids=UNSAFE_CHARACTERS.keys())
def test_text_with_a_control_or_formatting_character_inside_is_refused_naming_the_field(character: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        fields.text(f"Table{character}money", "description", max_length=80)
    assert caught.value.field == "description"
    assert caught.value.message.startswith("description: contains U+")


@pytest.mark.parametrize(
    "value",
    ["Table money", "Café de l'Opéra", "北京桥牌俱乐部", "Ναυτικός Όμιλος", "Entry 🙂", "می\u200cخواهم", "👩\u200d💻 night"],
    ids=["ascii", "accents", "cjk", "greek", "emoji", "persian ZWNJ", "emoji ZWJ"],
)
def test_text_in_any_script_with_joiners_is_accepted(value: str) -> None:
    assert fields.text(value, "description", max_length=80) == value


REFUSED_EMAILS = {
    "two addresses with a comma": "x@evil.io,victim@example.org",
    "two addresses with a semicolon": "x@evil.io;victim@example.org",
    "two addresses with a space": "x@evil.io victim@example.org",
    "display name": "Ann <ann@example.org>",
    "angle brackets": "<ann@example.org>",
    "quoted local part": '"ann lee"@example.org',
    "double quote": 'ann"@example.org',
    "comment": "ann(comment)@example.org",
    "space in the local part": "ann lee@example.org",
    "space in the domain": "ann@example .org",
    "two at signs": "ann@x@example.org",
    "no at sign": "ann.example.org",
    "empty local part": "@example.org",
    "undotted domain": "ann@localhost",
    "trailing dot": "ann@example.org.",
    "empty label": "ann@example..org",
    "leading dot in the local part": ".ann@example.org",
    "two dots in the local part": "ann..lee@example.org",
    "hyphen at a label's start": "ann@-example.org",
    "numeric top-level domain": "ann@10.0.0.1",
    "address literal": "ann@[10.0.0.1]",
    "header injection": "ann@example.org\r\nBcc: victim@example.org",
    "line separator": "ann@example.org\u2028x",
    "right-to-left override": "ann\u202e@example.org",
    "local part over 64 characters": "a" * 65 + "@example.org",
    "backslash": "ann\\@example.org",
}


@pytest.mark.parametrize("address", REFUSED_EMAILS.values(), ids=REFUSED_EMAILS.keys())
def test_anything_but_one_plain_email_address_is_refused_naming_the_field(address: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        fields.email(address)
    assert caught.value.field == "email"


@pytest.mark.parametrize(
    "address",
    ["ann@example.org", "o'brien@example.org", "ann.lee+bridge@mail.example.com.au", "ANN_99@Example.ORG",
     "ann@bücher.de", "ann@xn--bcher-kva.de"],
)
def test_one_plain_email_address_is_accepted(address: str) -> None:
    assert fields.email(address) == address


@pytest.mark.parametrize(
    ("value", "fitted"),
    [("short", "short"), ("x" * 10, "x" * 10), ("x" * 11, "x" * 9 + "\u2026"), ("y" * 500, "y" * 9 + "\u2026")],
)
def test_fit_shortens_text_to_the_column_and_marks_the_cut(value: str, fitted: str) -> None:
    assert fields.fit(value, 10) == fitted
    assert len(fields.fit(value, 10)) <= 10


@pytest.mark.parametrize("value", ["²", "١٢", "0", "1001", "abc", "-1", " 5", "5 ", "1e3", "", "9" * 40])
def test_a_page_limit_is_ascii_digits_from_1_to_the_most_or_a_400_naming_limit(value: str) -> None:
    # "²" and "١٢" are digits to str.isdigit; int() refuses the first (a 500 before) and reads the second.
    with pytest.raises(InvalidInput) as caught:
        fields.page_limit(value)
    assert caught.value.field == "limit"


def test_a_page_limit_defaults_and_takes_its_bounds() -> None:
    assert fields.page_limit(None) == 100
    assert fields.page_limit("1000") == 1000
    assert fields.page_limit(None, default=1000, most=10_000) == 1000
    assert fields.page_limit("10000", default=1000, most=10_000) == 10_000


def test_an_entry_type_is_one_of_the_statements_types_or_a_400_naming_the_field() -> None:
    assert fields.entry_type("Club Membership") == "Club Membership"
    for value in ("club membership", "Settlements", ""):
        with pytest.raises(InvalidInput) as caught:
            fields.entry_type(value)
        assert caught.value.field == "type"
