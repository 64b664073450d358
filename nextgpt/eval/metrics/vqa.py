r"""VQA accuracy, written to match the official VQA-Challenge evaluation answer for answer.

The reference is ``vqaEval.py`` of the VQA evaluation tools (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, class ``VQAEval``; the same code is mirrored by
Cloud-CV for the EvalAI challenge servers). No maintained package ships it, so it is re-implemented
here; the rules below are the ones that code applies, quirks included, as of its latest revision
(commit a013f00, "Fixed processing answers bug", March 2021).

**Accuracy of one question.** With ``n`` annotator answers (10 in VQAv2, VizWiz and OK-VQA, where
OK-VQA lists each of its 5 answers twice), each answer in turn is left out and the prediction scores
``min(1, m / 3)`` against the other ``n - 1``, ``m`` being how many of them equal it; the accuracy is
the mean of those ``n`` scores. With 10 answers, 0 / 1 / 2 / 3 / 4+ matches give
0 / 0.3 / 0.6 / 0.9 / 1.0. Fewer or more answers follow the same leave-one-out rule, so with fewer
than four answers even a unanimous match stays below 1 (``n`` matches give ``min(1, (n - 1) / 3)``:
a single reference answer always scores 0).

**Normalisation** (:func:`normalize_answer`), in the official order:

1. newlines and tabs become spaces, and the ends are stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` is deleted when that mark
   stands next to a space anywhere in the (step-1) answer, or when the answer holds a digit-comma-digit
   (``1,000``), and is otherwise replaced by a space; the test is made per mark against the answer as
   it came in, not as it is being rewritten. Apostrophes and colons are not in the list and survive;
3. periods not followed by a digit are deleted, so a decimal point survives (``3.5``) and so does any
   period before a digit (``.5``, ``a.5``), while ``5.`` loses its period: the official pattern's
   leading group ``(?!<=\d)`` is a look-*ahead* (a no-op there), not the look-behind it resembles.
   The official call passes ``re.UNICODE`` where ``re.sub`` takes its ``count``, so at most 32
   periods (the flag's value) are deleted; we keep that limit;
4. lower-casing and splitting on whitespace; the number words ``none`` and ``zero`` .. ``ten``
   become ``0`` .. ``10``; the articles ``a``, ``an``, ``the`` are dropped; missing apostrophes are
   restored from the official contraction table (``dont`` -> ``don't``), the words joined by single
   spaces. The table is kept exactly, including its few keys that can never match a lower-cased word
   (``Im``, ``Ive``, ``Id've``, ``I'dve``) and its one entry that removes an apostrophe
   (``somebody'd`` -> ``somebodyd``).

**When normalisation applies** (:func:`vqa_accuracy`). Both the prediction and the references always
get step 1. Steps 2-4 are applied, to the prediction *and* to every reference, only when the
references (after step 1) are not all the same string; when the annotators agree verbatim the
prediction is compared raw, so against ten ``"yes"`` the prediction ``"Yes"`` scores 0, while against
nine ``"yes"`` and one ``"yes."`` it scores 1. Earlier revisions of the official file (still found in
copies of it) normalised the prediction always, and the references with the punctuation steps only,
under the same condition; we follow the current revision.

The official code forms each leave-one-out subset by comparing whole answer records, which in VQAv2
removes exactly one record because each has its own ``answer_id``; we leave out one answer by position.

:func:`exact_match` is the accuracy of open-ended video QA (MSVD-QA, MSRVTT-QA): whether the
normalised prediction equals a normalised reference. :func:`extract_short_answer` is our own,
documented post-processing of a chat model's sentence-long reply, not part of any official metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nextgpt.errors import InputError

# The official contraction table (word without apostrophe -> word with it), kept exactly.
_CONTRACTIONS: dict[str, str] = {
    "'ow'sat": "'ow's'at",
    "'ows'at": "'ow's'at",
    "I'dve": "I'd've",
    "Id've": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldn'tve": "couldn't've",
    "couldnt": "couldn't",
    "couldnt've": "couldn't've",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadn'tve": "hadn't've",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "he'dve": "he'd've",
    "hed": "he'd",
    "hed've": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "it'dve": "it'd've",
    "itd": "it'd",
    "itd've": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightn'tve": "mightn't've",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "shant": "shan't",
    "she'dve": "she'd've",
    "she's": "she's",
    "shed've": "she'd've",
    "shouldn'tve": "shouldn't've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldve": "should've",
    "somebody'd": "somebodyd",
    "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someone'dve": "someone'd've",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "something'dve": "something'd've",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "there'dve": "there'd've",
    "thered": "there'd",
    "thered've": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "they'dve": "they'd've",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "we'dve": "we'd've",
    "wed've": "we'd've",
    "werent": "weren't",
    "weve": "we've",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "who'dve": "who'd've",
    "whod": "who'd",
    "whod've": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldn'tve": "wouldn't've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldve": "would've",
    "y'all'dve": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'allll": "y'all'll",
    "yall": "y'all",
    "yall'd've": "y'all'd've",
    "yall'll": "y'all'll",
    "you'dve": "you'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# Number words the official code turns into digits ("none" counts as zero).
_NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES = frozenset({"a", "an", "the"})

# The marks the official code deletes or turns into spaces, in its order (periods are handled apart).
_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# A digit, a comma, a digit anywhere in the answer: then every mark is deleted instead of spaced.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")

# A period not followed by a digit (what the official pattern matches, see the module docstring).
_BARE_PERIOD = re.compile(r"\.(?!\d)")

# The official call passes re.UNICODE (value 32) in the position of re.sub's count argument.
_MAX_PERIODS_DELETED = 32

_ANSWER_PREFIX = re.compile(r"^(?:(?:final|short)\s+)?(?:answer|ans|a)\s*[:：]\s*", re.IGNORECASE)


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _check_answers(answers: object) -> list[str]:
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise InputError(f"answers must be a sequence (list, tuple) of str, got {type(answers).__name__}")
    if len(answers) == 0:
        raise InputError("answers is empty: a question needs at least one reference answer")
    return [_check_str(a, f"answers[{i}]") for i, a in enumerate(answers)]


def _clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs to spaces, ends stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """Steps 2 and 3: the official punctuation and period handling."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # The decision looks at the incoming text, never at ``out`` as rewritten so far.
        beside_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or beside_space else " ")
    return _BARE_PERIOD.sub("", out, count=_MAX_PERIODS_DELETED)


def _process_words(text: str) -> str:
    """Step 4: lower-case, number words to digits, articles dropped, contractions restored."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _normalize_clean(text: str) -> str:
    return _process_words(_process_punctuation(text))


def normalize_answer(answer: str) -> str:
    """The official VQA processing of one answer: whitespace, punctuation, then digits/articles/contractions.

    Args:
        answer: a predicted or reference answer.

    Returns:
        The normalised answer, e.g. ``"Two"`` -> ``"2"``, ``"the dog."`` -> ``"dog"``,
        ``"dont"`` -> ``"don't"``, ``"1,000"`` -> ``"1000"``, ``"3.5"`` -> ``"3.5"``.

    Raises:
        InputError: ``answer`` is not a str.
    """
    return _normalize_clean(_clean_whitespace(_check_str(answer, "answer")))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy, as the official VQA evaluation computes it (VQAv2, VizWiz, OK-VQA).

    The mean over the leave-one-out subsets of ``answers`` of ``min(1, matches / 3)``; prediction and
    answers are normalised only when the answers are not all identical after whitespace cleaning
    (see the module docstring for why and for the exact rules).

    Args:
        prediction: the model's short answer.
        answers: the annotators' answers, duplicates kept (10 for VQAv2 / VizWiz / OK-VQA).

    Returns:
        The accuracy in [0, 1] (not the official report's percentage).

    Raises:
        InputError: ``prediction`` is not a str, ``answers`` is not a non-empty sequence of str.
    """
    pred = _clean_whitespace(_check_str(prediction, "prediction"))
    refs = [_clean_whitespace(a) for a in _check_answers(answers)]
    if len(set(refs)) > 1:
        refs = [_normalize_clean(a) for a in refs]
        pred = _normalize_clean(pred)
    hits = [ref == pred for ref in refs]
    total = sum(hits)
    # Leaving out answer i leaves ``total - hits[i]`` matches among the others.
    scores = [min(1.0, (total - hit) / 3) for hit in hits]
    return sum(scores) / len(scores)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """Open-ended video QA accuracy (MSVD-QA, MSRVTT-QA): exact match of the normalised answer.

    Both sides go through :func:`normalize_answer` (always, unlike :func:`vqa_accuracy`).

    Args:
        prediction: the model's short answer.
        answers: the accepted answers (usually one).

    Returns:
        1.0 when the normalised prediction equals the normalised form of any answer, else 0.0.

    Raises:
        InputError: ``prediction`` is not a str, ``answers`` is not a non-empty sequence of str.
    """
    pred = normalize_answer(_check_str(prediction, "prediction"))
    refs = _check_answers(answers)
    return 1.0 if any(normalize_answer(a) == pred for a in refs) else 0.0


def extract_short_answer(text: str) -> str:
    """The short answer in a chat model's reply: our own documented post-processing, not official.

    Takes the first non-blank line, strips a leading ``Answer:`` / ``Ans:`` / ``A:`` (also
    ``Final answer:``, ``Short answer:``; any case, ASCII or full-width colon) and trailing periods
    and whitespace. Everything else (case, articles, punctuation) is left to the metric's normalisation.

    Args:
        text: the model's reply.

    Returns:
        The short answer, ``""`` for a blank reply.

    Raises:
        InputError: ``text`` is not a str.
    """
    lines = [line.strip() for line in _check_str(text, "text").splitlines()]
    first = next((line for line in lines if line), "")
    return _ANSWER_PREFIX.sub("", first, count=1).rstrip(". \t")
