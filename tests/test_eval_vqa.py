"""VQA accuracy / exact match / answer extraction against hand-computed values of the official rules.

Expected values are worked out by hand from the official VQA evaluation (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py); the arithmetic is in the comments.
"""

from __future__ import annotations

import pytest

from nextgpt.errors import InputError
from nextgpt.eval.metrics.vqa import exact_match, extract_short_answer, normalize_answer, vqa_accuracy

# ---------------------------------------------------------------------------------------------------
# accuracy: leave-one-out over the annotators' answers, min(1, matches / 3) per subset
# ---------------------------------------------------------------------------------------------------


def _answers(matching: int, total: int = 10) -> list[str]:
    """``matching`` copies of "cat" and the rest spread over two other answers (so they are not all equal)."""
    others = ["dog", "bird"] * total
    return ["cat"] * matching + others[: total - matching]


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # 0 matches: every subset has 0 -> 0.
        (0, 0.0),
        # 1 match: 9 subsets keep it (1/3), 1 drops it (0): 9 * 1/3 / 10 = 0.3.
        (1, 0.3),
        # 2 matches: 8 subsets drop a non-match (2/3), 2 drop a match (1/3): (8*2/3 + 2*1/3) / 10 = 0.6.
        (2, 0.6),
        # 3 matches: 7 subsets keep 3 (1), 3 keep 2 (2/3): (7*1 + 3*2/3) / 10 = 0.9.
        (3, 0.9),
        # 4 matches: every subset keeps at least 3 -> 1.
        (4, 1.0),
        (7, 1.0),
        (10 - 1, 1.0),
    ],
)
def test_ten_answers(matching: int, expected: float) -> None:
    assert vqa_accuracy("cat", _answers(matching)) == pytest.approx(expected)


def test_ten_identical_answers_all_matching() -> None:
    # 10 matches: every subset keeps 9 -> 1.
    assert vqa_accuracy("cat", ["cat"] * 10) == pytest.approx(1.0)


def test_more_than_ten_answers() -> None:
    # 12 answers, 3 match: 9 subsets keep 3 (1), 3 keep 2 (2/3): (9 + 3*2/3) / 12 = 11/12.
    assert vqa_accuracy("cat", _answers(3, total=12)) == pytest.approx(11 / 12)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # one answer: the only subset is empty -> 0, even when it matches.
        (["cat"], 0.0),
        # two answers, both match: each subset keeps 1 -> 1/3.
        (["cat", "cat"], 1 / 3),
        # three answers, two match: subsets drop dog (2/3), cat (1/3), cat (1/3): (2/3 + 2/3) / 3 = 4/9.
        (["cat", "cat", "dog"], 4 / 9),
        # four answers, all match: each subset keeps 3 -> 1.
        (["cat"] * 4, 1.0),
        # five answers, one matches: 4 subsets keep it (1/3), 1 drops it: 4/3 / 5 = 4/15.
        (["cat", "dog", "dog", "bird", "cow"], 4 / 15),
    ],
)
def test_fewer_answers(answers: list[str], expected: float) -> None:
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_okvqa_answers_listed_twice() -> None:
    # OK-VQA lists each of 5 answers twice: "puppy" is 1 of 5 -> 2 of 10 -> 0.6; "dog" 2 of 5 -> 4 -> 1.
    five = ["dog", "puppy", "dog", "canine", "pet"]
    assert vqa_accuracy("puppy", five * 2) == pytest.approx(0.6)
    assert vqa_accuracy("dog", five * 2) == pytest.approx(1.0)
    assert vqa_accuracy("wolf", five * 2) == 0.0


def test_vizwiz_unanswerable() -> None:
    # VizWiz: 3 of 10 "unanswerable" -> 0.9 as above.
    answers = ["unanswerable"] * 3 + ["blue"] * 4 + ["navy blue"] * 3
    assert vqa_accuracy("unanswerable", answers) == pytest.approx(0.9)
    # "Navy Blue." normalises to "navy blue": 3 of 10 -> 0.9.
    assert vqa_accuracy("Navy Blue.", answers) == pytest.approx(0.9)


def test_prediction_is_normalised_when_answers_differ() -> None:
    # The answers differ, so both sides are normalised: "Two." -> "2" and "two" -> "2"; 8 of 10 -> 1.
    assert vqa_accuracy("Two.", ["2"] * 5 + ["two"] * 3 + ["3"] * 2) == pytest.approx(1.0)
    # "The Dog!" -> "dog": 2 of 10 -> 0.6.
    assert vqa_accuracy("The Dog!", ["dog", "a dog"] + ["cat"] * 8) == pytest.approx(0.6)


# ---------------------------------------------------------------------------------------------------
# the official condition: normalise (both sides) only when the answers are not all identical
# ---------------------------------------------------------------------------------------------------


def test_no_normalisation_when_answers_identical() -> None:
    # Ten identical "yes": nothing is normalised, "Yes" != "yes" -> 0 matches -> 0.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    # Raw equality still counts: 10 matches -> 1.
    assert vqa_accuracy("Yes", ["Yes"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("two", ["two"] * 10) == pytest.approx(1.0)


def test_normalisation_when_answers_differ_by_punctuation() -> None:
    # Nine "yes" and one "yes.": two distinct strings, so everything is normalised to "yes" -> 10 of 10 -> 1.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes."]) == pytest.approx(1.0)
    # "two" x5 and "2" x5 are distinct, so all become "2"; the prediction "2" matches all 10 -> 1.
    assert vqa_accuracy("2", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    # The prediction is normalised as well: "two" -> "2" matches all 10 -> 1.
    assert vqa_accuracy("two", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)


def test_identity_is_judged_after_whitespace_cleaning() -> None:
    # Tabs/newlines -> spaces and strip apply first, so "yes" and " yes\n" are the same answer: no
    # normalisation, and the raw prediction "Yes" matches none -> 0.
    assert vqa_accuracy("Yes", ["yes"] * 5 + [" yes\n"] * 5) == 0.0
    # The prediction is whitespace-cleaned too: "\tyes " -> "yes" matches all 10 -> 1.
    assert vqa_accuracy("\tyes ", ["yes"] * 10) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# normalize_answer: the official punctuation / digit / article / contraction processing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # number words, including "none" -> 0; only zero..ten are mapped
        ("Two", "2"),
        ("none", "0"),
        ("zero", "0"),
        ("TEN", "10"),
        ("eleven", "eleven"),
        ("two dogs", "2 dogs"),
        # articles are dropped, case is lowered
        ("the dog.", "dog"),
        ("An apple", "apple"),
        ("THE", ""),
        ("It's a cat", "it's cat"),
        # contractions are restored; capitalised table keys can never match a lower-cased word
        ("dont", "don't"),
        ("Isnt", "isn't"),
        ("Im", "im"),
        ("somebody'd", "somebodyd"),
        # punctuation not beside a space becomes a space, beside a space it is deleted
        ("yes!", "yes"),
        ("black-white", "black white"),
        ("black - white", "black white"),
        ("red,blue", "red blue"),
        ("red, blue", "red blue"),
        ("a (red) car", "red car"),
        ("x/y", "x y"),
        # the space test looks at the incoming answer, not the rewritten one: "(" becomes a space in
        # front of "-", yet "-" (beside no space in "(-x-y") is spaced, not deleted: "  x y" -> "x y"
        ("(-x-y", "x y"),
        # a digit-comma-digit anywhere deletes every mark, so "well-known" is glued too
        ("1,000", "1000"),
        ("well-known 1,000", "wellknown 1000"),
        # periods: deleted unless followed by a digit (the official pattern has no look-behind)
        ("3.5", "3.5"),
        ("5.", "5"),
        (".5", ".5"),
        ("a.5", "a.5"),
        ("u.s.a.", "usa"),
        ("e.g. dog", "eg dog"),
        # colons and apostrophes are not in the list
        ("10:30", "10:30"),
        ("dog's", "dog's"),
        # newlines and tabs are spaces; runs of spaces collapse
        ("\tA\nDog ", "dog"),
        ("big   dog", "big dog"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_deletion_is_capped_at_32() -> None:
    # The official call passes re.UNICODE (32) as re.sub's count: of 40 bare periods 8 survive.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("." * 32) == ""


# ---------------------------------------------------------------------------------------------------
# exact_match (open-ended video QA)
# ---------------------------------------------------------------------------------------------------


def test_exact_match() -> None:
    assert exact_match("Two", ["2"]) == 1.0
    assert exact_match("the man.", ["man"]) == 1.0
    assert exact_match("woman", ["man", "boy"]) == 0.0
    assert exact_match("boy", ["man", "boy"]) == 1.0
    # unlike vqa_accuracy, normalisation always applies, and one reference suffices
    assert exact_match("Yes", ["yes"]) == 1.0
    assert exact_match("2 men", ["two men"]) == 1.0
    assert exact_match("men", ["two men"]) == 0.0


# ---------------------------------------------------------------------------------------------------
# extract_short_answer (our post-processing)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: Two dogs.\nThey are playing.", "Two dogs"),
        ("answer:yes", "yes"),
        ("A: 3.5.", "3.5"),
        ("a: no", "no"),
        ("Ans: red", "red"),
        ("Final answer: blue.", "blue"),
        ("\n\n  yes.  \nmore", "yes"),
        ("Apple.", "Apple"),
        ("A cat.", "A cat"),
        ("The answer is on the table", "The answer is on the table"),
        ("", ""),
        ("   \n ", ""),
    ],
)
def test_extract_short_answer(text: str, expected: str) -> None:
    assert extract_short_answer(text) == expected


def test_extract_then_score() -> None:
    # "Answer: Two." -> "Two" -> normalised "2" against 8 "2"/"two" of 10 -> 1.
    assert vqa_accuracy(extract_short_answer("Answer: Two."), ["2"] * 5 + ["two"] * 3 + ["3"] * 2) == 1.0


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [vqa_accuracy, exact_match])
def test_bad_prediction(fn) -> None:
    with pytest.raises(InputError, match="prediction must be a str, got int"):
        fn(3, ["3"])
    with pytest.raises(InputError, match="prediction must be a str, got NoneType"):
        fn(None, ["3"])


@pytest.mark.parametrize("fn", [vqa_accuracy, exact_match])
def test_bad_answers(fn) -> None:
    with pytest.raises(InputError, match="answers is empty"):
        fn("yes", [])
    with pytest.raises(InputError, match=r"answers\[1\] must be a str, got NoneType"):
        fn("yes", ["yes", None])
    with pytest.raises(InputError, match="answers must be a sequence"):
        fn("yes", "yes")
    with pytest.raises(InputError, match="answers must be a sequence"):
        fn("yes", None)


def test_bad_text() -> None:
    with pytest.raises(InputError, match="answer must be a str, got bytes"):
        normalize_answer(b"yes")
    with pytest.raises(InputError, match="text must be a str, got int"):
        extract_short_answer(1)
    # InputError is a ValueError, so plain callers can catch it as one
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])
