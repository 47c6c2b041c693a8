"""VQA accuracy as the VQA evaluation script defines it (VQAv2, OK-VQA, VizWiz; GQA uses its
normalisation only).

Normalisation: punctuation (each of the listed marks is deleted when it touches a space or when the
text has a comma between two digits, otherwise replaced by a space), then every period not followed by
a digit is deleted (the script's period pattern only looks ahead, so "3.5" keeps its period and "3."
loses it), then lowercase words, number words zero..ten (and "none") become digits, the articles
a/an/the are dropped and apostrophe-less contractions get their apostrophe back ("dont" -> "don't").

Per question, each of the n gold answers is left out in turn and the prediction scores
min(#matches among the other n-1 / 3, 1); the question's accuracy is the mean of those n scores.
The prediction and every gold answer go through the same normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCT = (
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
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
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

# The script's contraction table, as written-without-apostrophe -> restored. Its four entries keyed
# with a capital I ("Im", "Ive", ...) are left out: words are lowercased before the look-up, so they never
# match. "somebody'd" -> "somebodyd" is the table's own (reversed) entry, kept as it scores.
_CONTRACTION_TABLE = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd
howll:how'll hows:how's isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's
maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've
mustnt:mustn't mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've
she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've
somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd thered've:there'd've
there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've
theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've
weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's
whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll
whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(":", 1) for pair in _CONTRACTION_TABLE.split())


def process_punctuation(text: str) -> str:
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCT:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if (delete_all or touches_space) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalise_vqa_answer(text: str) -> str:
    """An answer as the VQA script compares it (newlines and tabs become spaces first)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(text))


def vqa_question_accuracy(prediction: str | None, gold_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of the gold answers of min(#matches / 3, 1); 0 for no prediction."""
    if prediction is None or not gold_answers:
        return 0.0
    # the VQA script normalises gold answers only when they differ among themselves; here always, so that
    # ten identical gold answers needing normalisation (e.g. "t-shirt") can still be matched
    pred = normalise_vqa_answer(prediction)
    hits = [normalise_vqa_answer(g) == pred for g in gold_answers]
    total = sum(hits)
    return sum(min((total - hit) / 3.0, 1.0) for hit in hits) / len(hits)
