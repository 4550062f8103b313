"""The streaming JSON helper agrees with ``json.loads``: valid documents are incomplete at every
proper prefix and complete exactly at their end; invalid ones fail at the first impossible
character, whatever pieces they arrive in."""

from __future__ import annotations

import json

import pytest

from dynamo.llm.parsers.json_prefix import JsonPrefix, JsonStatus

VALID = [
    "{}",
    "[]",
    ' { "a" : [ 1 , -2.5e+3 , 0 , 0.25 , 1E9 , true , false , null ] } ',
    '{"s": "quote \\" backslash \\\\ slash \\/ \\b\\f\\n\\r\\t \\u00e9 \\uD83D\\uDE00", "k": {}}',
    '[[[{"deep": [{"er": []}]}]], "日本語 👩\u200d👩\u200d👧", -0, -0.0e-0]',
    '{"name": "f", "arguments": {"text": "brackets ] } [ { inside"}}',
]

# (text, index of the first character no JSON can continue with)
INVALID = [
    ("{a: 1}", 1),
    ('{"a" 1}', 5),
    ('{"a": 01}', 7),
    ('{"a": 1.}', 8),
    ('{"a": 1e}', 8),
    ('{"a": -}', 7),
    ('{"a": tru }', 9),
    ('{"a": NaN}', 6),
    ('{"a": Infinity}', 6),
    ('{"a": 1,}', 8),
    ("[1, 2,]", 6),
    ('["a\nb"]', 3),
    ('["\\x"]', 3),
    ('["\\u12G4"]', 6),
    ('{"a": 1]', 7),
    ("[1}", 2),
    ('"top-level string"', 0),
    ("42", 0),
    ("x", 0),
    ("{} ", None),  # complete at 2: what follows is not its business
]


def feed_pieces(pieces: list[str]) -> JsonPrefix:
    scanner = JsonPrefix()
    for piece in pieces:
        scanner.feed(piece)
    return scanner


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents(doc: str) -> None:
    stripped_end = len(doc.rstrip())
    for cut in range(stripped_end):
        assert feed_pieces([doc[:cut]]).status is JsonStatus.INCOMPLETE, doc[:cut]
    for pieces in ([doc], list(doc), [doc[:3], doc[3:]]):
        scanner = feed_pieces(pieces)
        assert scanner.status is JsonStatus.COMPLETE
        assert scanner.end == stripped_end
        assert scanner.value() == json.loads(doc)


@pytest.mark.parametrize(("text", "bad"), INVALID)
def test_invalid_documents(text: str, bad: int | None) -> None:
    for pieces in ([text], list(text)):
        scanner = feed_pieces(pieces)
        if bad is None:
            assert scanner.status is JsonStatus.COMPLETE and scanner.end == 2
            continue
        assert scanner.status is JsonStatus.INVALID
        assert scanner.end == bad
        for cut in range(bad + 1):  # everything before the bad character could still be JSON
            assert feed_pieces([text[:cut]]).status is JsonStatus.INCOMPLETE


def test_answer_is_final() -> None:
    scanner = JsonPrefix()
    assert scanner.feed('{"a": 1}') is JsonStatus.COMPLETE
    assert scanner.feed(" garbage") is JsonStatus.COMPLETE
    assert scanner.end == 8
