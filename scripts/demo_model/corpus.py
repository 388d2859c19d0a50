"""The demo model's words and sentences: vocabulary, grammar, disfluencies, the plan.

Kept apart from synthesis so that the seeded sentence plan can be replayed cheaply
(no espeak-ng, no audio): the tests use that to check that held-out sentences were
never trained on. Every function here draws from the ``random.Random`` it is given, in
a fixed order; changing that order changes the sentences, and so the model a rebuild
gives.
"""

from __future__ import annotations

import random

from scripts.demo_model.tts import Voice, VoicePool, train_voices

FILLERS = ("um", "uh")
UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
SUBJECTS = ["i", "you", "we", "they", "he", "she"]
VERBS = [
    "need",
    "want",
    "like",
    "see",
    "meet",
    "call",
    "send",
    "take",
    "make",
    "bring",
    "find",
    "read",
    "buy",
    "pay",
    "open",
    "close",
    "start",
    "stop",
    "move",
    "check",
]
NOUNS = [
    "meeting",
    "report",
    "office",
    "car",
    "house",
    "book",
    "phone",
    "team",
    "price",
    "order",
    "letter",
    "train",
    "ticket",
    "dinner",
    "coffee",
    "bus",
    "doctor",
    "school",
    "money",
    "window",
    "table",
    "water",
    "email",
    "plan",
    "song",
]
ADJECTIVES = ["new", "big", "small", "good", "old", "red"]
TIMES = ["today", "tomorrow", "yesterday", "morning", "evening", "night", "week"]
OTHER = "the a on in at to and please next last this before after every is will can hundred"
VOCABULARY = sorted(
    set(
        FILLERS
        + tuple(UNITS + TEENS + TENS + DAYS + MONTHS + SUBJECTS + VERBS + NOUNS)
        + tuple(ADJECTIVES + TIMES + OTHER.split())
    )
)


def number_words(rng: random.Random) -> list[str]:
    """A number from 0 to 999 in words ("three hundred and forty two")."""
    n = rng.choice([rng.randint(0, 20), rng.randint(21, 99), rng.randint(100, 999)])
    out: list[str] = []
    if n >= 100:
        out += [UNITS[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return out
        out.append("and")
    if n < 10:
        out.append(UNITS[n])
    elif n < 20:
        out.append(TEENS[n - 10])
    else:
        out.append(TENS[n // 10 - 2])
        if n % 10:
            out.append(UNITS[n % 10])
    return out


def when(rng: random.Random) -> list[str]:
    """A time phrase ("on friday evening", "before march twenty"): most sentences end in one."""
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.choice(["today", "tomorrow", "yesterday"])]
    if kind == 1:
        return ["on", rng.choice(DAYS)] + ([rng.choice(["morning", "evening"])] * rng.randint(0, 1))
    if kind == 2:
        return ["in", rng.choice(MONTHS)]
    if kind == 3:
        return [rng.choice(["before", "after", "on"]), rng.choice(MONTHS), *number_words(rng)[:2]]
    if kind == 4:
        return [rng.choice(["next", "last", "this", "every"]), rng.choice([*DAYS, "week"])]
    return ["at", rng.choice(UNITS[1:] + TEENS[:3])]


def noun_phrase(rng: random.Random) -> list[str]:
    """Determiner, sometimes an adjective, and a noun: the grammar's objects."""
    det = rng.choice(["the", "a", "this", "the"])
    adj = [rng.choice(ADJECTIVES)] if rng.random() < 0.35 else []
    return [det, *adj, rng.choice(NOUNS)]


def sentence(rng: random.Random) -> list[str]:
    """One short sentence from the demo grammar."""
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.choice(SUBJECTS), rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 1:
        subj = rng.choice(SUBJECTS)
        return [subj, rng.choice(["will", "can"]), rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 2:
        return ["please", rng.choice(VERBS), *noun_phrase(rng), *when(rng)]
    if kind == 3:
        return ["the", rng.choice(NOUNS), "is", *number_words(rng)]
    if kind == 4:
        return [rng.choice(DAYS), rng.choice(MONTHS), *number_words(rng)[:2]]
    if kind == 5:
        digits = [rng.choice(UNITS) for _ in range(rng.randint(3, 6))]
        return [rng.choice(["call", "send"]), rng.choice(["the", "a"]), "team", "at", *digits]
    return [
        rng.choice(SUBJECTS),
        rng.choice(["need", "want", "like"]),
        "to",
        rng.choice(VERBS),
        *noun_phrase(rng),
        "and",
        rng.choice(VERBS),
        *noun_phrase(rng),
    ]


def disfluent(words: list[str], rng: random.Random, p_filler: float, p_repeat: float) -> list[str]:
    """Insert fillers and one word repetition: the verbatim form of ``words``."""
    out = list(words)
    if rng.random() < p_repeat:
        k = rng.randrange(len(out))
        out.insert(k, out[k])
    n_fill = 0
    if rng.random() < p_filler:
        n_fill = 1 + int(rng.random() < 0.35)
    for _ in range(n_fill):
        out.insert(rng.randrange(len(out)), rng.choice(FILLERS))
    return out


HELDOUT_COUNT = 24 + 10 + 40
"""Held-out sentences: 24 held-out clips, 10 hard clips, the rest for long-form data."""

CONTINUOUS_COUNT = 24 + 66
"""Further held-out sentences for the continuous sets: 24 clips, the rest for the
2-minute continuous clip. Drawn after the first HELDOUT_COUNT from the same stream,
so the word-joined sets keep their sentences."""

Plan = list[tuple[list[str], list[str], Voice]]
"""(verbatim words, clean words, voice) of each training utterance."""


def heldout_sentences(seed: int, count: int = HELDOUT_COUNT + CONTINUOUS_COUNT) -> list[list[str]]:
    """Distinct grammar sentences for testing, drawn from their own seeded stream.

    They come from ``seed + 1`` so that the test data can be rebuilt without replaying
    the whole training plan, and training can exclude them. The first HELDOUT_COUNT
    are the word-joined sets' (the same as before the continuous sets existed), the
    next CONTINUOUS_COUNT the continuous sets'.
    """
    trng = random.Random(seed + 1)
    test_sentences: list[list[str]] = []
    while len(test_sentences) < count:
        s = sentence(trng)
        if s not in test_sentences:
            test_sentences.append(s)
    return test_sentences


def training_plan(
    seed: int, n_voices: int, n_utterances: int, pool: VoicePool, filler_share: float = 0.5
) -> tuple[list[Voice], list[list[str]], Plan]:
    """Training voices, held-out sentences and (verbatim, clean, voice) of each utterance.

    Cheap (no synthesis), so tests can check that held-out sentences are unseen.
    ``filler_share`` is the share of utterances with one or two fillers inserted.
    """
    rng = random.Random(seed)
    voices = train_voices(rng, n_voices, pool)
    # Held-out sentences first, so training can exclude them.
    test_sentences = heldout_sentences(seed)
    held = {" ".join(s) for s in test_sentences}
    plan: Plan = []
    while len(plan) < n_utterances:
        s = sentence(rng)
        if rng.random() < 0.2:  # short pieces (1-3 words) make CTC's first steps easy
            k = rng.randrange(len(s))
            s = s[k : k + rng.randint(1, 3)]
        if " ".join(s) in held:
            continue
        v = disfluent(s, rng, p_filler=filler_share, p_repeat=0.2)
        plan.append((v, s, rng.choice(voices)))
    return voices, test_sentences, plan
