"""A rule-based triplet generator: colour, object, count and attribute swaps on words it knows.

It needs no model, so it is the fallback when an LLM answer is rejected (`--fallback templates`) and a quick seed
source (`--engine templates`). It only edits captions that contain a word from its small lexicons; otherwise it
returns None. Choices are drawn from a generator seeded by (seed, caption), so results do not depend on row order.
"""

import random
import re
import zlib
from collections.abc import Callable

COLOURS = (
    "red orange yellow green blue purple pink brown black white grey gold silver beige navy turquoise "
    "maroon teal cream"
).split()

# Objects are swapped only within a group, so the result stays plausible ("a dog on a sofa" → "a cat on a sofa").
OBJECT_GROUPS = {
    "animal": "dog cat horse cow sheep goat pig rabbit fox bear deer wolf lion tiger zebra giraffe elephant monkey",
    "bird": "bird duck parrot owl pigeon swan goose chicken eagle",
    "vehicle": "car bus truck van taxi motorcycle scooter bicycle tractor",
    "boat": "boat canoe kayak yacht ship",
    "top": "shirt blouse sweater hoodie jacket coat cardigan vest",
    "dress": "dress skirt",
    "trousers": "jeans trousers shorts leggings",
    "footwear": "shoe boot sneaker sandal slipper",
    "hat": "hat cap beanie helmet",
    "bag": "bag backpack handbag suitcase basket",
    "fruit": "apple banana pear lemon lime peach plum strawberry cherry mango pineapple",
    "vegetable": "carrot tomato potato onion pepper cucumber broccoli",
    "food": "pizza sandwich burger cake donut cookie salad pie",
    "container": "cup mug bowl plate bottle glass jar vase teapot",
    "seat": "chair sofa bench stool armchair",
    "furniture": "table desk bed shelf cabinet",
    "light": "lamp candle lantern",
    "instrument": "guitar violin piano drum trumpet flute",
    "ball": "ball football basketball",
    "flower": "rose tulip sunflower daisy lily",
    "tree": "tree palm oak pine",
    "person": "man woman boy girl child",
}
_GROUP_OF = {word: group for group, words in OBJECT_GROUPS.items() for word in words.split()}
_IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "sheep": "sheep", "deer": "deer", "goose": "geese",
    "mouse": "mice", "shelf": "shelves", "knife": "knives", "jeans": "jeans", "trousers": "trousers",
    "shorts": "shorts", "leggings": "leggings", "glass": "glasses", "bus": "buses", "box": "boxes",
    "peach": "peaches", "sandwich": "sandwiches", "bench": "benches", "tomato": "tomatoes", "potato": "potatoes",
    "strawberry": "strawberries", "cherry": "cherries", "daisy": "daisies", "lily": "lilies", "puppy": "puppies",
}
_SINGULARS = {plural: singular for singular, plural in _IRREGULAR_PLURALS.items()}

NUMBERS = "one two three four five six seven eight nine ten".split()

# Opposite attributes; each pair works both ways.
ATTRIBUTE_PAIRS = [
    ("big", "small"), ("large", "tiny"), ("tall", "short"), ("old", "new"), ("young", "elderly"),
    ("wooden", "metal"), ("plastic", "glass"), ("leather", "denim"), ("cotton", "woollen"), ("empty", "full"),
    ("open", "closed"), ("long", "short"), ("sunny", "rainy"), ("summer", "winter"), ("day", "night"),
    ("happy", "sad"), ("wet", "dry"), ("clean", "dirty"), ("modern", "vintage"), ("striped", "plain"),
    ("smiling", "frowning"), ("sitting", "standing"), ("running", "walking"), ("shiny", "matte"),
    ("round", "square"), ("hot", "iced"), ("bright", "dark"), ("calm", "stormy"),
]
_OPPOSITE = {}
for _first, _second in ATTRIBUTE_PAIRS:
    _OPPOSITE.setdefault(_first, _second)
    _OPPOSITE.setdefault(_second, _first)

# The kind of change (`prompts.KINDS_OF_CHANGE`) of each rule, and of an attribute swap by the attribute it writes.
RULE_KINDS = {"colour": "colour", "add_colour": "colour", "object": "object_replacement", "count": "count"}
_ATTRIBUTE_KINDS = {
    "size": "big small large tiny tall short long round square",
    "material_texture": "wooden metal plastic glass leather denim cotton woollen shiny matte striped plain old new "
                        "modern vintage clean dirty wet dry",
    "person_animal_attribute": "young elderly happy sad smiling frowning",
    "pose_orientation": "open closed sitting standing running walking hot iced",
    "background_scene": "sunny rainy summer winter day night calm stormy bright dark",
    "add_object": "full",
    "remove_object": "empty",
}
_KIND_OF_ATTRIBUTE = {word: kind for kind, words in _ATTRIBUTE_KINDS.items() for word in words.split()}


def kind_of_change(rule: str, caption: str, modified_caption: str) -> str:
    """The kind of change (one of `prompts.KINDS_OF_CHANGE`) of a triplet the `rule` (`TemplateGenerator.kinds`)
    wrote: an attribute swap's kind is that of the attribute it wrote ("sunny" → "rainy": background_scene)."""
    if rule != "attribute":
        return RULE_KINDS[rule]
    old_words = set(re.findall(r"[a-z]+", caption.lower()))
    written = [word for word in re.findall(r"[a-z]+", modified_caption.lower())
               if word in _KIND_OF_ATTRIBUTE and word not in old_words]
    return _KIND_OF_ATTRIBUTE[written[0]] if written else "material_texture"

_TOKEN = re.compile(r"[A-Za-z]+|[^A-Za-z]+")


def pluralize(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def singularize(word: str) -> str | None:
    """The lexicon noun a word is a form of, or None."""
    if word in _GROUP_OF:
        return word
    if word in _SINGULARS:
        return _SINGULARS[word]
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in _GROUP_OF:
            return word[: -len(suffix)] + replacement
    return None


def _match_case(template: str, word: str) -> str:
    return word.capitalize() if template[:1].isupper() else word


def _fix_articles(words: list[str]) -> list[str]:
    """`a apple` → `an apple` after a swap (and back), on the token list."""
    alpha = [i for i, token in enumerate(words) if token.isalpha()]
    for position, index in enumerate(alpha[:-1]):
        article = words[index].lower()
        if article in ("a", "an"):
            following = words[alpha[position + 1]].lower()
            wanted = "an" if following[0] in "aeiou" else "a"
            words[index] = _match_case(words[index], wanted)
    return words


class TemplateGenerator:
    """`generate(caption)` → (modification, modified_caption, kind) or None when no rule applies."""

    kinds = ("colour", "object", "count", "attribute", "add_colour")

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _rng(self, caption: str) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}:{caption}".encode()))

    def generate(self, caption: str) -> tuple[str, str, str] | None:
        rng = self._rng(caption)
        tokens = _TOKEN.findall(caption)
        kinds = list(self.kinds[:4])
        rng.shuffle(kinds)
        kinds.append("add_colour")  # the last resort: it changes the least
        for kind in kinds:
            result = getattr(self, f"_{kind}")(tokens, rng)
            if result is not None:
                modification, new_tokens = result
                return modification, "".join(_fix_articles(new_tokens)), kind
        return None

    @staticmethod
    def _positions(tokens: list[str], predicate: Callable[[str], bool]) -> list[int]:
        return [i for i, token in enumerate(tokens) if token.isalpha() and predicate(token.lower())]

    def _choose(self, tokens: list[str], rng: random.Random, predicate: Callable[[str], bool]) -> int | None:
        """A random position of a word `predicate` accepts, or None when there is none."""
        positions = self._positions(tokens, predicate)
        return rng.choice(positions) if positions else None

    @staticmethod
    def _next_word(tokens: list[str], index: int) -> str | None:
        for token in tokens[index + 1 :]:
            if token.isalpha():
                return token.lower()
            if token.strip():  # punctuation ends the noun phrase
                return None
        return None

    def _colour(self, tokens: list[str], rng: random.Random) -> tuple[str, list[str]] | None:
        index = self._choose(tokens, rng, lambda word: word in COLOURS)
        if index is None:
            return None
        old = tokens[index].lower()
        new = rng.choice([colour for colour in COLOURS if colour != old])
        noun = self._next_word(tokens, index)
        tokens = list(tokens)
        tokens[index] = _match_case(tokens[index], new)
        if noun and singularize(noun):
            phrasing = rng.choice([f"make the {noun} {new}", f"change the {noun} to {new}", f"a {new} {noun} instead"])
        else:
            phrasing = rng.choice([f"change {old} to {new}", f"{new} instead of {old}", f"make it {new}"])
        return phrasing, tokens

    def _object(self, tokens: list[str], rng: random.Random) -> tuple[str, list[str]] | None:
        index = self._choose(tokens, rng, lambda word: singularize(word) is not None)
        if index is None:
            return None
        word = tokens[index].lower()
        old = singularize(word)
        new = rng.choice([noun for noun in OBJECT_GROUPS[_GROUP_OF[old]].split() if noun != old])
        plural = word != old or (word in _SINGULARS)
        new_word = pluralize(new) if plural else new
        tokens = list(tokens)
        tokens[index] = _match_case(tokens[index], new_word)
        shown_old, shown_new = (word, new_word) if plural else (old, new)
        phrasing = rng.choice(
            [
                f"replace the {shown_old} with {'' if plural else 'a '}{shown_new}",
                f"make the {shown_old} {shown_new}" if plural else f"make the {old} a {new}",
                f"show {shown_new} instead of the {shown_old}" if plural else f"show a {new} instead of the {old}",
            ]
        )
        return phrasing.replace("a a", "an a").replace(" a e", " an e").replace(" a o", " an o"), tokens

    def _count(self, tokens: list[str], rng: random.Random) -> tuple[str, list[str]] | None:
        positions = self._positions(tokens, lambda word: word in NUMBERS[1:])
        tokens = list(tokens)
        if positions:
            index = rng.choice(positions)
            old = tokens[index].lower()
            new = rng.choice([number for number in NUMBERS[1:6] if number != old])
            noun = self._next_word(tokens, index) or "of them"
            tokens[index] = _match_case(tokens[index], new)
            return rng.choice([f"show {new} {noun} instead of {old}", f"make it {new} {noun}"]), tokens
        # "a dog" → "two dogs": only for a lexicon noun right after the article, so the plural is safe.
        for index, token in enumerate(tokens):
            if token.lower() in ("a", "an") and index + 2 < len(tokens):
                noun = tokens[index + 2].lower()
                if noun in _GROUP_OF and tokens[index + 1] == " ":
                    new = rng.choice(NUMBERS[1:4])
                    tokens[index] = _match_case(token, new)
                    tokens[index + 2] = pluralize(noun)
                    return rng.choice([f"show {new} {pluralize(noun)}", f"make it {new} {pluralize(noun)}"]), tokens
        return None

    def _attribute(self, tokens: list[str], rng: random.Random) -> tuple[str, list[str]] | None:
        index = self._choose(tokens, rng, lambda word: word in _OPPOSITE)
        if index is None:
            return None
        old = tokens[index].lower()
        new = _OPPOSITE[old]
        tokens = list(tokens)
        tokens[index] = _match_case(tokens[index], new)
        noun = self._next_word(tokens, index)
        if noun and singularize(noun):
            phrasing = rng.choice([f"make the {noun} {new}", f"change the {noun} from {old} to {new}"])
        else:
            phrasing = rng.choice([f"make it {new} instead of {old}", f"change {old} to {new}"])
        return phrasing, tokens

    def _add_colour(self, tokens: list[str], rng: random.Random) -> tuple[str, list[str]] | None:
        positions = self._positions(tokens, lambda word: word in _GROUP_OF and word != "person")
        positions = [i for i in positions if _GROUP_OF[tokens[i].lower()] != "person"]
        if not positions:
            return None
        index = positions[0]
        noun = tokens[index].lower()
        colour = rng.choice(COLOURS)
        tokens = list(tokens)
        tokens[index : index + 1] = [colour, " ", tokens[index]]
        return rng.choice([f"make the {noun} {colour}", f"a {colour} {noun}"]), tokens
