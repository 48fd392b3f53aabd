"""Prompt formats, the completion parser and the triplet filters.

The answer format is two labelled lines, easy to parse and easy for a small model to imitate:

    Modification: make the dog a cat
    Modified caption: a cat running on the beach

`one_step` asks for both lines at once. `two_step` first asks for the modification only, then, given the caption and
that modification, for the modified caption: small models (SmolLM2-135M) keep each step on topic more often.

A prompt can also ask for one kind of change (`KINDS_OF_CHANGE`): the caption line is followed by
`Kind of change: <the kind in words>`. The seed triplets are tagged with their kind, a generator tuned on them learns
to follow that line, and generation asks for the kinds in turn, so that no kind of change dominates the data.
"""

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_STYLES = ("one_step", "two_step")

# The kinds of change the seed triplets cover in balanced numbers, and how a prompt names each one.
KIND_DESCRIPTIONS = {
    "colour": "colour",
    "object_replacement": "replace an object with another",
    "add_object": "add an object",
    "remove_object": "remove an object",
    "count": "number of things",
    "size": "size or shape",
    "material_texture": "material or texture",
    "style_medium": "style or medium (photo, drawing, cartoon, painting)",
    "background_scene": "background, scene, weather or time of day",
    "pose_orientation": "pose, orientation, action or state",
    "person_animal_attribute": "attribute of a person or animal (expression, age, clothing, hair)",
}
KINDS_OF_CHANGE = tuple(KIND_DESCRIPTIONS)


def check_kind(kind: str | None) -> str | None:
    """`kind` itself when it is None or one of `KINDS_OF_CHANGE`; a clear error otherwise."""
    if kind is not None and kind not in KIND_DESCRIPTIONS:
        raise ValueError(f"kind of change must be one of {KINDS_OF_CHANGE}, got {kind!r}")
    return kind

INSTRUCTION = (
    "You edit image captions. Given the caption of an image, imagine one small, concrete, visible change to the "
    "image (colour, object, count, material, size, setting, time of day or an added or removed item). "
    "Reply with exactly two lines:\n"
    "Modification: <a short instruction describing the change>\n"
    "Modified caption: <the caption of the changed image>"
)
INSTRUCTION_MODIFICATION = (
    "You edit image captions. Given the caption of an image, imagine one small, concrete, visible change to the "
    "image (colour, object, count, material, size, setting, time of day or an added or removed item). "
    "Reply with one line:\nModification: <a short instruction describing the change>"
)
INSTRUCTION_MODIFIED_CAPTION = (
    "You edit image captions. Given the caption of an image and a modification, write the caption of the image "
    "after the modification. Keep everything the modification does not change. Reply with one line:\n"
    "Modified caption: <the caption of the changed image>"
)
# Added to the instruction of a prompt that asks for a kind of change.
KIND_INSTRUCTION = "\nWhen a kind of change is given, make one change of that kind."

# A few in-prompt examples (written for this project). Fine-tuned generators are usually prompted with none.
FEW_SHOT_EXAMPLES = (
    ("a brown dog running on the beach", "make the dog a cat", "a brown cat running on the beach"),
    ("a red sports car parked on a street", "change the car to blue", "a blue sports car parked on a street"),
    ("two women sitting on a bench in a park", "show only one woman", "a woman sitting on a bench in a park"),
    ("a white ceramic mug on a wooden desk", "make the mug glass", "a glass mug on a wooden desk"),
    ("a city skyline at sunset", "show it at night", "a city skyline at night with lit windows"),
)
# Their kinds of change, shown when a prompt asks for a kind.
FEW_SHOT_KINDS = ("object_replacement", "colour", "count", "material_texture", "background_scene")


def _user_message(caption: str, step: str, modification: str | None = None, kind: str | None = None) -> str:
    if step == "modified_caption":  # the modification already says what changes: no kind line
        return f"Caption: {caption}\nModification: {modification}"
    if kind is not None:
        return f"Caption: {caption}\nKind of change: {KIND_DESCRIPTIONS[kind]}"
    return f"Caption: {caption}"


def _assistant_message(modification: str, modified_caption: str, step: str) -> str:
    if step == "modification":
        return f"Modification: {modification}"
    if step == "modified_caption":
        return f"Modified caption: {modified_caption}"
    return f"Modification: {modification}\nModified caption: {modified_caption}"


def build_messages(caption: str, step: str = "both", modification: str | None = None, num_shots: int = 3,
                   kind: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one caption.

    `step` is "both" (one-step prompting), "modification" or "modified_caption" (the two steps of two-step
    prompting; the second needs `modification`). The first `num_shots` built-in examples become earlier turns.
    `kind` (one of `KINDS_OF_CHANGE`) asks for that kind of change; the examples then show their own kinds.
    """
    check_kind(kind)
    if step not in ("both", "modification", "modified_caption"):
        raise ValueError(f"step must be 'both', 'modification' or 'modified_caption', got {step!r}")
    if step == "modified_caption" and not modification:
        raise ValueError("the 'modified_caption' step needs the modification written in the first step")
    instruction = {
        "both": INSTRUCTION,
        "modification": INSTRUCTION_MODIFICATION,
        "modified_caption": INSTRUCTION_MODIFIED_CAPTION,
    }[step]
    if kind is not None and step != "modified_caption":
        instruction += KIND_INSTRUCTION
    messages = [{"role": "system", "content": instruction}]
    for (shot_caption, shot_modification, shot_modified), shot_kind in zip(FEW_SHOT_EXAMPLES[:num_shots],
                                                                           FEW_SHOT_KINDS):
        shot_kind = shot_kind if kind is not None else None
        messages.append({"role": "user", "content": _user_message(shot_caption, step, shot_modification, shot_kind)})
        messages.append(
            {"role": "assistant", "content": _assistant_message(shot_modification, shot_modified, step)}
        )
    messages.append({"role": "user", "content": _user_message(caption, step, modification, kind)})
    return messages


def target_text(modification: str, modified_caption: str, step: str = "both") -> str:
    """The completion a generator should write for `step` (used as the SFT completion)."""
    return _assistant_message(modification, modified_caption, step)


def render_prompt(tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, str]]) -> str:
    """Messages → prompt string: the tokenizer's chat template when it has one, else a plain text layout."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base (non-chat) models and the tiny test tokenizer: "### Role" blocks, ending where the answer starts.
    blocks = [f"### {message['role'].capitalize()}\n{message['content']}" for message in messages]
    return "\n\n".join(blocks) + "\n\n### Assistant\n"


# ---------------------------------------------------------------------------------------------------------------
# Parsing

_LINE = re.compile(
    r"^[\s>*#\-\d.)]*(?P<label>modification|modified caption|new caption|edited caption)\s*[:\-–]\s*(?P<text>.*)$",
    re.IGNORECASE,
)


@dataclass
class ParsedTriplet:
    """What the parser read from one completion; `rejection` names why it cannot be used (None when usable)."""

    modification: str | None = None
    modified_caption: str | None = None
    rejection: str | None = None


def _clean(text: str) -> str:
    text = text.strip().strip("\"'`“”‘’").strip()
    text = re.sub(r"\s+", " ", text)
    return text.rstrip(" .;,")


def parse_completion(text: str, step: str = "both") -> ParsedTriplet:
    """Read the labelled lines of a completion. The first occurrence of each label wins (models often go on)."""
    found = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        label = "modification" if match["label"].lower() == "modification" else "modified_caption"
        found.setdefault(label, _clean(match["text"]))
    wanted = {"both": ("modification", "modified_caption"), "modification": ("modification",)}.get(
        step, ("modified_caption",)
    )
    if not all(label in found for label in wanted):
        # A bare single line is a fair answer to a one-line step ("make it red" with no label).
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if step != "both" and len(lines) >= 1 and not _LINE.match(lines[0]):
            found[wanted[0]] = _clean(lines[0])
        else:
            return ParsedTriplet(rejection="unparseable")
    return ParsedTriplet(found.get("modification"), found.get("modified_caption"))


# ---------------------------------------------------------------------------------------------------------------
# Filters

# Words that carry no content for the "is the modification reflected" check: function words and edit verbs.
_NON_CONTENT = set(
    """a an the of to in on at with and or but for from by into onto it its this that these those is are be was
    were been being make made change changed turn replace replaced swap instead show shown showing add added remove
    removed put place take away without more less same other one out up off
    around behind next near beside under over above below between image picture photo scene version so now
    them they their there here his her he she him as than then very just only also some any all no not do
    does give set move let have keep become look appear both each get rid delete drop longer""".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalize(text: str) -> str:
    """Lowercased words only: the comparison key for "same as the caption" and duplicate captions."""
    return " ".join(_WORD.findall(text.lower()))


# Words that say how many: for the checks, any one of them shows a change of number ("add a second cat" → "two cats").
_NUMBER_WORDS = set(
    """one two three four five six seven eight nine ten eleven twelve single second third fourth fifth pair couple
    several many few dozen another""".split()
)
_NUMBER = "#number"


def _stem(word: str) -> str:
    # Singular/plural and the commonest verb endings are the same content for this check.
    if word in _NUMBER_WORDS:
        return _NUMBER
    for suffix in ("ies", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            word = word[: -len(suffix)]
            break
    for suffix in ("ing", "ed"):  # "saluting" → "salut", found in "salute"; "drained" → "drain"
        if word.endswith(suffix) and len(word) > len(suffix) + 3:
            return word[: -len(suffix)]
    return word


def _content_stems(text: str) -> set[str]:
    return {_stem(word) for word in _WORD.findall(text.lower()) if word not in _NON_CONTENT}


def _mentioned(word: str, words: set[str]) -> bool:
    """`word` appears in `words`, up to word form: one contains the other ("dog" / "sheepdog", "slice" / "sliced")."""
    return any(
        word == other or (min(len(word), len(other)) >= 3 and (word in other or other in word)) for other in words
    )


def looks_like_junk(text: str) -> bool:
    """Non-text output: markup, URLs, control characters, too few letters, stuttering repetition."""
    if re.search(r"https?://|www\.|[<>{}\[\]\\|`@#$^~=_]|\.\.\.\.", text):
        return True
    if any(unicodedata.category(char).startswith("C") for char in text):
        return True
    visible = [char for char in text if not char.isspace()]
    if not visible or sum(char.isalpha() for char in visible) / len(visible) < 0.7:
        return True
    if re.search(r"(.)\1{4,}", text):
        return True
    words = text.lower().split()
    return any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))


class RejectionCounter(Counter):
    """Counts of skipped input rows and rejected generations, by reason (the dataset card reports them)."""

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))


@dataclass
class TripletFilter:
    """Decides whether a (caption, modification, modified caption) triplet is kept; `check` returns the reason not to.

    Reasons: `empty`, `same_as_caption`, `modification_copies_caption`, `too_long`, `non_text`, `not_reflected`,
    and, with `require_change_shown` (the default), `change_not_shown`: the modified caption does not change the way
    the modification says (see `change_shown`).
    """

    max_modification_words: int = 20
    max_modified_caption_words: int = 60
    max_length_ratio: float = 3.0
    require_change_shown: bool = True

    def check(self, caption: str, modification: str | None, modified_caption: str | None) -> str | None:
        if not modification or not modified_caption or not normalize(modification) or not normalize(modified_caption):
            return "empty"
        if normalize(modified_caption) == normalize(caption):
            return "same_as_caption"
        if normalize(modification) in (normalize(modified_caption), normalize(caption)):
            return "modification_copies_caption"
        modified_words = len(modified_caption.split())
        if (
            len(modification.split()) > self.max_modification_words
            or modified_words > self.max_modified_caption_words
            or modified_words > self.max_length_ratio * len(caption.split()) + 8
        ):
            return "too_long"
        if looks_like_junk(modification) or looks_like_junk(modified_caption):
            return "non_text"
        # "make the dog a cat": the new content ("cat") should show up in the modified caption. Word forms differ
        # ("close the laptop" → "a closed laptop", "make it snowy" → "snow"), and a change can be worded differently
        # ("make it show noon" → "twelve o'clock"), so a modified caption that adds any new content word also passes.
        # What is rejected: new content asked for, and a modified caption that only drops words of the caption.
        caption_stems = _content_stems(caption)
        modified_stems = _content_stems(modified_caption)
        new_content = {word for word in _content_stems(modification) if not _mentioned(word, caption_stems)}
        if (
            new_content
            and not any(_mentioned(word, modified_stems) for word in new_content)
            and all(_mentioned(word, caption_stems) for word in modified_stems)
        ):
            return "not_reflected"
        if self.require_change_shown and not change_shown(caption, modification, modified_caption):
            return "change_not_shown"
        return None


# "remove the hat", "take the cup away", "without the beard": what follows names something that must be gone.
_REMOVAL = re.compile(r"\b(?:remove|removed|without|take away|take off|get rid of|delete|drop|no more|no longer)\b")

_PREPOSITION = re.compile(r"\b(?:from|in|on|at|of|off|under|behind|next|near|beside|around|inside|out)\b")


def change_shown(caption: str, modification: str, modified_caption: str) -> bool:
    """Whether the modified caption differs from the caption the way the modification says, by two word checks:

    - where the modification names new content (content words not in the caption: "make the dog a *cat*"), at
      least one of them is in the modified caption (up to word form: "close" / "closed", "snow" / "snowy");
    - where it removes something the caption names ("remove the *hat*"), that word is gone from the modified caption.

    Stricter than `not_reflected`, which lets a modified caption with any new word pass: "make the dog a cat" →
    "a brown wolf on the beach" is rejected here. A change worded differently in the two texts ("make it show noon"
    → "twelve o'clock") is rejected too: the price of a check simple enough to explain.
    """
    caption_stems = _content_stems(caption)
    modified_stems = _content_stems(modified_caption)
    removal = _REMOVAL.search(modification.lower())
    asked = modification if removal is None else modification[: removal.start()]  # what is removed is not new
    new_content = {word for word in _content_stems(asked) if not _mentioned(word, caption_stems)}
    if new_content and not any(_mentioned(word, modified_stems) for word in new_content):
        return False
    if removal is not None:
        # the thing removed: up to a preposition ("remove the food *from the table*")
        removed_phrase = _PREPOSITION.split(modification[removal.end():].lower(), maxsplit=1)[0]
        removed = {word for word in _content_stems(removed_phrase) if word in caption_stems}
        if removed and any(word in modified_stems for word in removed):
            return False
    return True
