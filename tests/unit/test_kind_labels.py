"""tracker.metrics.KindLabels: the first TRACKER_METRICS_MAX_KINDS kinds named, the rest other."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from tracker.metrics import NO_KIND, OTHER_KIND, KindLabels

kinds = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b.c", "d_e", "f-g", "h", "i"])), max_size=40)


def test_the_first_kinds_are_named_the_rest_are_other_and_no_kind_is_none() -> None:
    labels = KindLabels(2)
    assert [labels.label(kind) for kind in ["a", None, "b", "a", "c", "b", "c", None]] == [
        "a",
        NO_KIND,
        "b",
        "a",
        OTHER_KIND,
        "b",
        OTHER_KIND,
        NO_KIND,
    ]
    assert [KindLabels(0).label(kind) for kind in ["a", None]] == [OTHER_KIND, NO_KIND]


@given(st.integers(min_value=0, max_value=8), kinds)
def test_a_kind_is_named_exactly_when_it_is_among_the_first_max_kinds_distinct_ones(max_kinds, seen) -> None:
    labels = KindLabels(max_kinds)
    answers = [labels.label(kind) for kind in seen]
    first = list(dict.fromkeys(kind for kind in seen if kind is not None))[:max_kinds]
    expected = [NO_KIND if kind is None else kind if kind in first else OTHER_KIND for kind in seen]
    assert answers == expected
    # and it stays so: asking again gives the same answers
    assert [labels.label(kind) for kind in seen] == expected


def test_threads_asking_at_once_name_no_more_than_the_cap() -> None:
    labels = KindLabels(10)
    named: set[str] = set()
    lock = threading.Lock()

    def ask(start: int) -> None:
        for n in range(start, start + 200):
            answer = labels.label(f"kind{n % 50}")
            with lock:
                named.add(answer)

    threads = [threading.Thread(target=ask, args=(offset,)) for offset in range(0, 40, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(named - {OTHER_KIND}) == 10 and OTHER_KIND in named
