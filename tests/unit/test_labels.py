"""A job's kind and labels (SPEC §11), checked at the SPEC's own boundaries: 64 characters, 16 pairs,
63-character keys starting and ending with a letter or digit, 256-character values."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker import labels

# The SPEC's alphabets, written out here rather than taken from the code.
KIND_CHARS = string.ascii_letters + string.digits + "._-"
KEY_EDGE = string.ascii_lowercase + string.digits
KEY_CHARS = KEY_EDGE + "._/-"
NOT_KIND = st.characters(exclude_characters=KIND_CHARS)
NOT_KEY = st.characters(exclude_characters=KEY_CHARS)

kinds = st.text(KIND_CHARS, min_size=1, max_size=64)
keys = st.one_of(
    st.sampled_from(KEY_EDGE),
    st.builds(
        lambda first, middle, last: first + middle + last,
        st.sampled_from(KEY_EDGE),
        st.text(KEY_CHARS, max_size=61),
        st.sampled_from(KEY_EDGE),
    ),
)
values = st.text(max_size=256).filter(lambda text: "\x00" not in text)


@given(kinds)
def test_a_kind_of_the_allowed_characters_up_to_64_is_taken_as_it_is(kind: str) -> None:
    assert labels.check_kind(kind) == kind


@given(kinds, st.integers(min_value=0, max_value=64), NOT_KIND)
def test_a_kind_with_any_other_character_is_refused(kind: str, at: int, other: str) -> None:
    with pytest.raises(ValueError, match=r"^kind must be 1 to 64 characters of A-Z a-z 0-9 \. _ -$"):
        labels.check_kind(kind[:at] + other + kind[at:])


@pytest.mark.parametrize("kind", ["", "k" * 65, "deliveryservice regenerate", "é", "a\n", None, 5, ["a"]])
def test_a_kind_out_of_bounds_is_refused(kind: object) -> None:
    with pytest.raises(ValueError, match=r"^kind must be"):
        labels.check_kind(kind)


def test_a_kind_of_64_characters_is_the_longest() -> None:
    assert labels.check_kind("k" * 64) == "k" * 64


@given(st.dictionaries(keys, values, max_size=16))
def test_up_to_16_pairs_of_allowed_keys_and_values_are_kept_sorted_by_key(given_labels: dict[str, str]) -> None:
    kept = labels.check_labels(given_labels)
    assert kept == tuple(sorted(given_labels.items()))
    assert dict(kept) == given_labels


@given(st.dictionaries(keys, values, min_size=17, max_size=20))
def test_more_than_16_pairs_are_refused(given_labels: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=f"^labels must be an object of at most 16 pairs, not {len(given_labels)}$"):
        labels.check_labels(given_labels)


@given(keys, st.integers(min_value=0, max_value=63), NOT_KEY)
def test_a_key_with_any_other_character_is_refused(key: str, at: int, other: str) -> None:
    bad = key[:at] + other + key[at:]
    with pytest.raises(ValueError, match=r"^labels key .* must be 1 to 63 characters of a-z 0-9 . _ / -"):
        labels.check_labels({bad: "v"})


@given(keys, st.sampled_from("._/-"), st.booleans())
def test_a_key_starting_or_ending_with_punctuation_is_refused(key: str, mark: str, at_start: bool) -> None:
    bad = mark + key if at_start else key + mark
    with pytest.raises(ValueError, match="starting and ending with a letter or digit"):
        labels.check_labels({bad: "v"})


def test_the_key_and_value_lengths_at_their_bounds() -> None:
    assert labels.check_labels({"k" * 63: "v" * 256}) == (("k" * 63, "v" * 256),)
    assert labels.check_labels({"k": ""}) == (("k", ""),)
    for too_long in ("k" * 64, ""):
        with pytest.raises(ValueError, match="labels key"):
            labels.check_labels({too_long: "v"})
    with pytest.raises(ValueError, match=r"^labels value of 'k' must be a string of at most 256 characters$"):
        labels.check_labels({"k": "v" * 257})


@pytest.mark.parametrize("value", [None, 1, True, ["v"], {"v": 1}])
def test_a_value_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^labels value of 'k' must be a string"):
        labels.check_labels({"k": value})


@pytest.mark.parametrize("value", ["a\x00b", "\ud800"])
def test_a_value_no_database_can_hold_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="neither NUL nor a lone surrogate"):
        labels.check_labels({"k": value})


@pytest.mark.parametrize("given_labels", [None, [], [["k", "v"]], "k=v", 3])
def test_labels_must_be_an_object(given_labels: object) -> None:
    with pytest.raises(ValueError, match=r"^labels must be an object of at most 16 pairs$"):
        labels.check_labels(given_labels)


def test_as_labels() -> None:
    assert labels.as_labels(None) == labels.as_labels({}) == ()
    assert labels.as_labels({"b": "1", "a": "2"}) == (("a", "2"), ("b", "1"))


# ---- `tracker jobs create` takes them (the Python client: tests/unit/test_leases.py)


def _cli_creates(monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[dict[str, object]]:
    """Run ``tracker jobs create`` with ``argv``; what it asked the client to create."""
    from tracker import cli
    from tracker.client import ApiClient

    asked: list[dict[str, object]] = []

    def create_job(self: ApiClient, message: str | None = None, **given: object) -> int:
        asked.append({"message": message, **given})
        return 7

    monkeypatch.setenv("TRACKER_API_TOKEN", "t")
    monkeypatch.setenv("TRACKER_API_URL", "http://127.0.0.1:1")
    monkeypatch.setattr(ApiClient, "create_job", create_job)
    assert cli.main(["jobs", "create", *argv]) in (0, 2)
    return asked


def test_jobs_create_takes_kind_and_labels(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    asked = _cli_creates(monkeypatch, "x", "--kind", "cdn.rebuild", "--label", "env=prod", "--label", "note=a=b")
    assert asked == [{"message": "x", "kind": "cdn.rebuild", "labels": {"env": "prod", "note": "a=b"}}]
    assert capsys.readouterr().out == "7\n"
    assert _cli_creates(monkeypatch) == [{"message": None, "kind": None, "labels": {}}]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--kind", "a b"], "--kind must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        (["--label", "env"], "--label takes KEY=VALUE, not 'env'"),
        (["--label", "env=a", "--label", "env=b"], "--label env is given more than once"),
        (["--label", "Env=prod"], "--label key 'Env' must be 1 to 63 characters"),
        (["--label", "env=" + "v" * 257], "--label value of 'env' must be a string of at most 256 characters"),
        ([arg for n in range(17) for arg in ("--label", f"k{n}=v")], "--label may be given at most 16 times, not 17"),
    ],
)
def test_jobs_create_refuses_a_bad_kind_or_label_before_calling_the_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert _cli_creates(monkeypatch, *argv) == []
    assert said in capsys.readouterr().err
