import json
from collections import Counter

import pytest

from data_gen.finetune import SEED_TRIPLETS, read_triplets
from data_gen.prompts import (
    KIND_DESCRIPTIONS,
    KINDS_OF_CHANGE,
    TripletFilter,
    build_messages,
    change_shown,
    parse_completion,
    render_prompt,
)
from data_gen.templates import TemplateGenerator, kind_of_change


def test_parse_one_step_answer_and_ignores_what_follows():
    parsed = parse_completion(
        "Modification: make the dog a cat.\nModified caption: \"a cat running on the beach\"\n\nCaption: more text"
    )
    assert (parsed.modification, parsed.modified_caption, parsed.rejection) == (
        "make the dog a cat",
        "a cat running on the beach",
        None,
    )


def test_parse_two_step_answers_and_bare_lines():
    assert parse_completion("Modification: make it red", "modification").modification == "make it red"
    assert parse_completion("make it red\nmore", "modification").modification == "make it red"
    assert parse_completion("Modified caption: a red car", "modified_caption").modified_caption == "a red car"


@pytest.mark.parametrize("completion", ["", "I cannot help with that.", "Modification: only one line"])
def test_parse_malformed_answers_are_rejections_not_errors(completion):
    assert parse_completion(completion).rejection == "unparseable"


@pytest.mark.parametrize(
    "modification, modified_caption, reason",
    [
        ("", "a cat on the beach", "empty"),
        ("make the dog a cat", "  ", "empty"),
        ("make the dog a cat", "A brown dog running on the beach.", "same_as_caption"),
        ("a brown cat running on the beach", "a brown cat running on the beach", "modification_copies_caption"),
        ("make the dog a cat", "a brown cat " + "running " * 30, "too_long"),
        ("make the dog a cat", "a cat <br> on http://x.org", "non_text"),
        ("make the dog a cat", "a cat cat cat cat on the beach", "non_text"),
        ("make the dog a cat", "a brown running on the beach", "not_reflected"),
        ("make the dog a cat", "a brown cat running on the beach", None),
        ("remove the dog", "an empty beach", None),
        ("close the umbrella", "a closed umbrella running on the beach", None),
    ],
)
def test_filter_reasons(modification, modified_caption, reason):
    caption = "a brown dog running on the beach" if "umbrella" not in modification else "an umbrella on the beach"
    assert TripletFilter().check(caption, modification, modified_caption) == reason


def test_prompts_render_with_and_without_chat_template(tiny_llm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    messages = build_messages("a red car", num_shots=2)
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    plain = render_prompt(tokenizer, messages)
    assert plain.endswith("Caption: a red car\n\n### Assistant\n")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert render_prompt(tokenizer, messages).endswith("<user>Caption: a red car<assistant>")
    with pytest.raises(ValueError, match="modification"):
        build_messages("a red car", step="modified_caption")


@pytest.mark.parametrize(
    "caption, kind",
    [
        ("a red car parked on a street", None),
        ("three cats sleeping on a sofa", None),
        ("a sunny street", "attribute"),
        ("a dog in a field", None),
    ],
)
def test_templates_apply_rules_and_pass_the_filters(caption, kind):
    result = TemplateGenerator(seed=1).generate(caption)
    assert result is not None
    modification, modified_caption, used_kind = result
    assert used_kind in TemplateGenerator.kinds and (kind is None or used_kind == kind)
    assert TripletFilter().check(caption, modification, modified_caption) is None


def test_templates_are_deterministic_and_know_when_to_give_up():
    generator = TemplateGenerator(seed=3)
    assert (
        generator.generate("a blue vase with a rose")
        == TemplateGenerator(seed=3).generate("a blue vase with a rose")
    )
    assert generator.generate("a sunset over the mountains") is None
    assert TemplateGenerator(seed=0).generate("an apple")[1].split()[0] in ("a", "an", "two", "three", "four")


def test_seed_triplets_are_many_diverse_unique_and_pass_the_filters():
    triplets = read_triplets([SEED_TRIPLETS])
    assert len(triplets) >= 250
    assert len({triplet["caption"] for triplet in triplets}) == len(triplets)
    categories = {json.loads(line)["category"] for line in open(SEED_TRIPLETS)}
    assert {"animals", "objects", "clothing", "products", "scenes", "people", "buildings", "icons", "drawings"} <= (
        categories
    )
    check = TripletFilter().check
    assert [t for t in triplets if check(t["caption"], t["modification"], t["modified_caption"])] == []


def test_read_triplets_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"caption": "a cat", "modification": "make it red", "modified_caption": "a red cat"}\n'
        '{"caption": "x"}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*missing or empty: \['modification', 'modified_caption'\]"):
        read_triplets([str(path)])


def test_seed_triplets_cover_every_kind_of_change_in_balanced_numbers():
    kinds = Counter(triplet["kind"] for triplet in read_triplets([SEED_TRIPLETS]))
    assert set(kinds) == set(KINDS_OF_CHANGE) and len(KINDS_OF_CHANGE) >= 10
    mean = sum(kinds.values()) / len(kinds)
    assert min(kinds.values()) >= 35
    assert all(0.85 * mean <= count <= 1.15 * mean for count in kinds.values()), kinds


def test_a_prompt_can_ask_for_a_kind_of_change_and_its_examples_show_theirs():
    messages = build_messages("a red car", num_shots=2, kind="style_medium")
    assert messages[-1]["content"] == f"Caption: a red car\nKind of change: {KIND_DESCRIPTIONS['style_medium']}"
    assert messages[1]["content"].endswith("Kind of change: replace an object with another")
    assert "kind of change" in messages[0]["content"]
    assert all("Kind of change" not in message["content"] for message in build_messages("a red car", num_shots=2))
    # the second step of two-step prompting is given the modification: no kind line there
    second = build_messages("a red car", "modified_caption", "make it blue", num_shots=0, kind="colour")
    assert "Kind of change" not in second[-1]["content"] and "kind of change" not in second[0]["content"]
    with pytest.raises(ValueError, match="kind of change must be one of"):
        build_messages("a red car", kind="texture")


@pytest.mark.parametrize(
    "caption, modification, modified_caption, shown",
    [
        ("a brown dog on the beach", "make the dog a cat", "a brown cat on the beach", True),
        ("a brown dog on the beach", "make the dog a cat", "a brown wolf on the beach", False),  # passes not_reflected
        ("a cat wearing a hat", "remove the hat", "a cat", True),
        ("a cat wearing a hat", "remove the hat", "a cat wearing a small hat", False),
        ("a family at a dinner table", "remove the food from the table", "a family at an empty table", True),
        ("a goldfish in a bowl", "add a second goldfish", "two goldfish in a bowl", True),
        ("a soldier standing", "make him salute", "a soldier saluting", True),
        ("a sketch of a cat", "make it a watercolour", "a sketch of a dog", False),
    ],
)
def test_change_shown_checks_the_modified_caption_changes_the_way_the_modification_says(
    caption, modification, modified_caption, shown
):
    assert change_shown(caption, modification, modified_caption) is shown
    reason = TripletFilter().check(caption, modification, modified_caption)
    assert (reason is None) is shown or reason != "change_not_shown"
    assert TripletFilter(require_change_shown=False).check(caption, modification, modified_caption) != (
        "change_not_shown"
    )


def test_template_rules_map_to_kinds_of_change():
    assert kind_of_change("colour", "a red car", "a blue car") == "colour"
    assert kind_of_change("object", "a red car", "a red bus") == "object_replacement"
    assert kind_of_change("count", "a dog", "two dogs") == "count"
    assert kind_of_change("attribute", "a sunny street", "a rainy street") == "background_scene"
    assert kind_of_change("attribute", "a big dog", "a small dog") == "size"
    for caption in ("a red car parked on a street", "three cats sleeping on a sofa", "a sunny street"):
        modification, modified_caption, rule = TemplateGenerator(seed=1).generate(caption)
        assert kind_of_change(rule, caption, modified_caption) in KINDS_OF_CHANGE
