"""Captions from interaction triplets, as the data writes them ("a person riding a bicycle").

Shared by the data readers (training captions) and the pipeline's multi-instance sampler
(one caption per interaction), so both write the same words."""
from __future__ import annotations

_VOWELS = set("aeiou")


def ing_form(verb: str) -> str:
    """The -ing phrase of a verb as the data writes it: "ride" -> "riding", "look_at" ->
    "looking at", "run" -> "running", "feeding" stays; "no_interaction" -> "with" (a person with a
    bicycle)."""
    words = verb.replace("_", " ").split()
    if not words:
        return verb
    if words == ["no", "interaction"]:
        return "with"
    head = words[0].lower()
    if head.endswith("ing") and set(head[:-3]) & (_VOWELS | {"y"}):
        return " ".join(words)                      # already -ing: "feeding" (but "swing" -> "swinging")
    if head == "be":
        head = "being"
    elif head.endswith("ie"):                       # lie -> lying, tie -> tying
        head = head[:-2] + "ying"
    elif head.endswith(("ee", "oe", "ye")):         # see -> seeing, hoe -> hoeing
        head += "ing"
    elif head.endswith("e") and len(head) > 2:      # ride -> riding
        head = head[:-1] + "ing"
    elif _doubles_final(head):                      # run -> running, sit -> sitting
        head += head[-1] + "ing"
    else:
        head += "ing"
    return " ".join([head, *words[1:]])


def _doubles_final(word: str) -> bool:
    # Short (one vowel group) words ending consonant-vowel-consonant double the consonant;
    # w, x and y never double. Longer words mostly do not (open -> opening).
    if len(word) < 3 or word[-1] in _VOWELS or word[-1] in "wxy":
        return False
    if word[-2] not in _VOWELS or word[-3] in _VOWELS:
        return False
    groups = sum(1 for i, c in enumerate(word) if c in _VOWELS and (i == 0 or word[i - 1] not in _VOWELS))
    return groups == 1


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in _VOWELS else 'a'} {noun}"


def caption_from_triplets(hois) -> str:
    """"a person riding a bicycle and holding an umbrella, a dog chasing a ball": the
    actions of one subject (same phrase and box) are joined with "and", subjects with ", "."""
    groups: dict[tuple, list[str]] = {}
    for hoi in hois:
        subject = (hoi.subject, tuple(hoi.subject_box))
        action = f"{ing_form(hoi.action)} {with_article(hoi.object)}"
        actions = groups.setdefault(subject, [])
        if action not in actions:
            actions.append(action)
    return ", ".join(f"{with_article(subject)} {' and '.join(actions)}" for (subject, _), actions in groups.items())
