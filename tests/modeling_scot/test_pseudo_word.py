"""Map-to-Compose's pseudo-word composer (modeling_pseudo_word.py) inside ScotModel, on tiny random CLIP, dual-encoder
and BLIP-2 retrieval backbones of the real transformers classes."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import AutoModel, AutoTokenizer
from transformers.dynamic_module_utils import get_imports

from modeling_scot import (
    ScotConfig,
    ScotModel,
    ScotProcessor,
    compute_pseudo_word_mapping_loss,
    pseudo_word_composing_loss,
    pseudo_word_mapping_loss,
)
from modeling_scot.modeling_pseudo_word import (
    PSEUDO_WORD_SLOT,
    build_pseudo_word_prompts,
    modification_token_ids,
    pseudo_tokens_spliced,
)
from tests.tiny_backbones import EMBED_DIM

ATOL = 1e-6
TEXTS = ["make it blue", "add a hat", "a red dog on the beach"]
CAPTIONS = ["a dog", "a red car", "a cat with a hat"]
K = 3
FAMILIES = ["clip", "dual_encoder", "blip2"]


def _images():
    return [Image.new("RGB", (40, 48), (200, 30, 30)), Image.new("L", (32, 32), 90),
            Image.new("RGB", (36, 36), (20, 160, 40))]


@pytest.fixture(params=FAMILIES)
def pseudo_word(request, backbone_folders):
    """(family, folder, a fresh pseudo-word ScotModel, its processor, the processor's inputs of the images and
    TEXTS)."""
    folder = backbone_folders[request.param]
    torch.manual_seed(0)
    model = ScotModel.from_backbone(folder, composer="pseudo_word", num_pseudo_tokens=K)
    processor = ScotProcessor.from_backbone(folder)
    return request.param, folder, model, processor, processor(images=_images(), text=TEXTS, return_tensors="pt")


def _text_inputs(inputs):
    return {name: inputs[name] for name in ("input_ids", "attention_mask")}


def _perturb_adapters(model, scale=0.05):
    # LoRA's B starts at zero (the adapters change nothing): give them weight, as training would
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.add_(torch.randn_like(parameter) * scale)


# -- the prompt, at the token level ---------------------------------------------------------------------------------


def test_the_prompt_is_the_tokenised_sentence_with_k_placeholders_for_dollar(pseudo_word):
    family, folder, model, processor, inputs = pseudo_word
    token_ids = model.config.pseudo_word_prompt_token_ids
    modifications = modification_token_ids(inputs["input_ids"], inputs["attention_mask"],
                                           token_ids["special_tokens_before"], token_ids["special_tokens_after"])
    prompt_ids, prompt_mask, pseudo_mask = build_pseudo_word_prompts(
        token_ids["prompt"], K, modifications, len(TEXTS), placeholder_token_id=token_ids["placeholder_token_id"],
        pad_token_id=token_ids["pad_token_id"], max_length=None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    before = token_ids["special_tokens_before"]
    dollar_at = before + len(tokenizer("a photo of", add_special_tokens=False)["input_ids"])
    for row, text in enumerate(TEXTS):
        sentence = tokenizer(f"a photo of $ that {text}")["input_ids"]  # `$` is one token in these vocabularies
        expected = sentence[:dollar_at] + [token_ids["placeholder_token_id"]] * K + sentence[dollar_at + 1:]
        length = int(prompt_mask[row].sum())
        assert prompt_ids[row, :length].tolist() == expected
        assert pseudo_mask[row].nonzero().flatten().tolist() == list(range(dollar_at, dollar_at + K))
        assert (prompt_ids[row, length:] == token_ids["pad_token_id"]).all()


def test_a_long_modification_is_cut_to_the_text_positions():
    template = [0, 5, PSEUDO_WORD_SLOT, -2, 1]
    ids, mask, pseudo = build_pseudo_word_prompts(template, 2, [list(range(10, 30))], 1, placeholder_token_id=7,
                                                  pad_token_id=1, max_length=12)
    assert ids.tolist() == [[0, 5, 7, 7, *range(10, 17), 1]] and mask.all() and pseudo.sum() == 2
    with pytest.raises(ValueError, match="takes 6 token positions"):
        build_pseudo_word_prompts(template, 3, [[10]], 1, placeholder_token_id=7, pad_token_id=1, max_length=5)


def test_pseudo_tokens_reach_the_text_encoder_at_their_positions(pseudo_word):
    family, _, model, _, inputs = pseudo_word
    token_ids = model.config.pseudo_word_prompt_token_ids
    modifications = modification_token_ids(inputs["input_ids"], inputs["attention_mask"], 1, 1)
    prompt_ids, prompt_mask, pseudo_mask = build_pseudo_word_prompts(
        token_ids["prompt"], K, modifications, len(TEXTS), placeholder_token_id=token_ids["placeholder_token_id"],
        pad_token_id=token_ids["pad_token_id"], max_length=None)
    width = model._text_token_embedding.embedding_dim
    pseudo_tokens = torch.randn(len(TEXTS), K, width)
    seen = {}
    with torch.no_grad(), pseudo_tokens_spliced(model._text_token_embedding, pseudo_mask, pseudo_tokens):
        # a second hook, run after the splice, sees what the text encoder's layers receive
        # (a copy: BLIP-2 adds its position embeddings in place)
        handle = model._text_token_embedding.register_forward_hook(
            lambda module, args, output: seen.update(embeds=output.clone()))
        spliced = model.get_text_features(input_ids=prompt_ids, attention_mask=prompt_mask)
        handle.remove()
    with torch.no_grad():  # the hook is gone afterwards: the placeholders' own embeddings again
        plain_embeds = model._text_token_embedding(prompt_ids)
        plain = model.get_text_features(input_ids=prompt_ids, attention_mask=prompt_mask)
    torch.testing.assert_close(seen["embeds"][pseudo_mask], pseudo_tokens.reshape(-1, width), atol=0, rtol=0)
    torch.testing.assert_close(seen["embeds"][~pseudo_mask], plain_embeds[~pseudo_mask], atol=0, rtol=0)
    assert (spliced - plain).norm(dim=-1).min() > 1e-3

    # changing one row's pseudo tokens changes that row's embedding only
    changed = pseudo_tokens.clone()
    changed[0, K - 1] += torch.randn(width)  # (a constant shift would vanish in the first LayerNorm)
    with torch.no_grad(), pseudo_tokens_spliced(model._text_token_embedding, pseudo_mask, changed):
        respliced = model.get_text_features(input_ids=prompt_ids, attention_mask=prompt_mask)
    assert (respliced[0] - spliced[0]).norm() > 1e-4
    torch.testing.assert_close(respliced[1:], spliced[1:], atol=ATOL, rtol=0)


def test_a_prompt_without_dollar_is_the_plain_text_embedding(backbone_folders):
    for family in FAMILIES:
        folder = backbone_folders[family]
        model = ScotModel.from_backbone(folder, composer="pseudo_word", pseudo_word_prompt="{modification}")
        processor = ScotProcessor.from_backbone(folder)
        inputs = processor(images=_images(), text=TEXTS, return_tensors="pt")
        with torch.no_grad():
            composed = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
            plain = model.get_text_features(**_text_inputs(inputs))
        torch.testing.assert_close(composed, plain, atol=ATOL, rtol=0)


def test_composed_queries_depend_on_image_and_text_and_come_back_unit_norm(pseudo_word):
    _, _, model, _, inputs = pseudo_word
    with torch.no_grad():
        output = model(**inputs)
        other_images = model.get_composed_features(pixel_values=inputs["pixel_values"].flip(0), **_text_inputs(inputs))
        composed, weight = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs),
                                                       return_text_weight=True)
    assert output.composed_embeds.shape == (len(TEXTS), EMBED_DIM) and weight is None
    torch.testing.assert_close(output.composed_embeds.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    torch.testing.assert_close(composed, output.composed_embeds, atol=ATOL, rtol=0)
    assert output.text_embeds is None and output.text_weight is None and output.loss is None
    assert (other_images[0] - composed[0]).norm() > 1e-4


def test_cached_image_side_features_give_the_same_composition(pseudo_word):
    _, _, model, _, inputs = pseudo_word
    assert model.composer_accepts_text_embeds is False
    assert model.composer_image_inputs == ("image_embeds", "image_token_embeds")
    with torch.no_grad():
        features = model.get_composer_image_features(inputs["pixel_values"])
        from_cache = model.get_composed_features(**features, **_text_inputs(inputs))
        from_pixels = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    assert set(features) == set(model.composer_image_inputs)
    torch.testing.assert_close(features["image_embeds"], image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(from_cache, from_pixels, atol=ATOL, rtol=0)


def test_missing_or_wrong_inputs_are_named(pseudo_word):
    _, _, model, _, inputs = pseudo_word
    image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="reads the modification's tokens"):
        model.get_composed_features(image_embeds, text_embeds=torch.randn(3, EMBED_DIM))
    with pytest.raises(ValueError, match="token states as well as the pooled embedding"):
        model.get_composed_features(image_embeds, **_text_inputs(inputs))
    with pytest.raises(ValueError, match="needs the modification texts"):
        model.get_composed_features(pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="not the Combiner"):
        model.compose(image_embeds, image_embeds)
    model.config.pseudo_word_prompt_token_ids = None
    with pytest.raises(ValueError, match="set_prompt_tokenizer"):
        model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))


# -- what trains in each stage ----------------------------------------------------------------------------------------


def _trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_stage_1_gradients_reach_only_the_mapping_network(pseudo_word):
    _, _, model, processor, inputs = pseudo_word
    assert {name.split(".")[0] for name in _trainable(model)} == {"pseudo_word_mapper"}
    model.train()
    with torch.no_grad():
        captions = model.get_text_features(**processor(text=CAPTIONS, return_tensors="pt"))
    features = model.get_composer_image_features(inputs["pixel_values"])
    prompts = model.get_image_prompt_features(**features)
    compute_pseudo_word_mapping_loss(model.config, prompts, features["image_embeds"], captions).backward()
    with_grad = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_grad and {name.split(".")[0] for name in with_grad} == {"pseudo_word_mapper"}
    assert any(model.get_parameter(name).grad.abs().sum() > 0 for name in with_grad if ".layers." in name)


def test_stage_2_gradients_reach_only_the_lora_weights_and_the_image_side_stays_frozen(pseudo_word):
    _, _, model, processor, inputs = pseudo_word
    with torch.no_grad():
        image_before = model.get_image_features(pixel_values=inputs["pixel_values"])
        modified = model.get_text_features(**processor(text=CAPTIONS[::-1], return_tensors="pt"))
        captions = model.get_text_features(**processor(text=CAPTIONS, return_tensors="pt"))
    model.add_composer_adapters(rank=4, dropout=0.1)
    assert model.config.pseudo_word_lora_state == "active" and model.config.pseudo_word_lora_rank == 4
    trainable = _trainable(model)
    assert trainable and all(".lora_" in name and name.startswith("encoder.") for name in trainable)
    _perturb_adapters(model)
    model.train()
    dropouts = [module for name, module in model.encoder.named_modules() if name.endswith(".lora_dropout")]
    assert dropouts and all(module.training for module in dropouts)  # the adapters train; the rest stays in eval
    assert not model.encoder.training
    output = model(**inputs, modified_caption_embeds=modified, caption_embeds=captions)
    output.loss.backward()
    with_grad = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_grad == trainable
    assert any(model.get_parameter(name).grad.abs().sum() > 0 for name in with_grad)
    model.eval()
    with torch.no_grad():  # adapters live on the text side only (for BLIP-2: the Q-Former's text-only feed-forward)
        torch.testing.assert_close(model.get_image_features(pixel_values=inputs["pixel_values"]), image_before,
                                   atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        model.add_composer_adapters()


def test_merged_adapters_save_and_reload_through_automodel_without_peft(pseudo_word, tmp_path, monkeypatch):
    _, _, model, processor, inputs = pseudo_word
    model.add_composer_adapters()
    _perturb_adapters(model)
    model.eval()
    with torch.no_grad():
        with_adapters = model(**inputs).composed_embeds
    assert model.merge_composer_adapters() > 0
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        merged = model(**inputs).composed_embeds
    torch.testing.assert_close(merged, with_adapters, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if "lora" in key or "base_layer" in key]
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["composer"] == "pseudo_word" and saved_config["pseudo_word_lora_state"] == "merged"
    # the Hub copy carries the composer's code, and trust_remote_code's import check does not ask for peft
    assert "peft" not in get_imports(tmp_path / "modeling_pseudo_word.py")

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails: loading must not need it
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is ScotModel and reloaded.config.composer == "pseudo_word"
    assert {name.split(".")[0] for name in _trainable(reloaded)} == {"pseudo_word_mapper"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).composed_embeds, merged, atol=ATOL, rtol=0)


def test_a_stage_2_checkpoint_reloads_with_its_adapters(backbone_folders, tmp_path):
    folder = backbone_folders["clip"]
    model = ScotModel.from_backbone(folder, composer="pseudo_word")
    inputs = ScotProcessor.from_backbone(folder)(images=_images(), text=TEXTS, return_tensors="pt")
    model.add_composer_adapters()
    _perturb_adapters(model)
    model.save_pretrained(tmp_path)  # what a Trainer checkpoint holds mid-stage-2
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.config.pseudo_word_lora_state == "active" and _trainable(reloaded) == _trainable(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).composed_embeds, model(**inputs).composed_embeds, atol=ATOL,
                                   rtol=0)


# -- the losses, on small cases computed by hand ----------------------------------------------------------------------


def test_mapping_loss_by_hand():
    e = math.e
    identity = torch.eye(3)
    # prompts = images = captions: each logit row is (1, 0, 0) up to order; p = q, so the KL is 0
    expected = math.log(1 + 2 / e)
    loss = pseudo_word_mapping_loss(identity, identity, identity, temperature=1.0, soft_alignment_temperature=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the prompts of images 0 and 1 swapped: two rows score the wrong image, the third the right one
    prompts = identity[[1, 0, 2]]
    contrastive = (2 * math.log(e + 2) + math.log(1 + 2 / e)) / 3
    assert pseudo_word_mapping_loss(prompts, identity, temperature=1.0).item() == pytest.approx(contrastive, abs=1e-6)
    # soft alignment: rows 0 and 1 put (e, 1, 1)/(e+2) on the wrong caption: KL = (e - 1)/(e + 2) each, row 2 zero
    soft = 2 * (e - 1) / (e + 2) / 3
    loss = pseudo_word_mapping_loss(prompts, identity, identity, temperature=1.0, soft_alignment_temperature=1.0,
                                    soft_alignment_weight=0.5)
    assert loss.item() == pytest.approx(contrastive + 0.5 * soft, abs=1e-6)
    # τ scales the logits: at τ = 0.5 the identity case has logits (2, 0, 0)
    loss = pseudo_word_mapping_loss(identity, identity, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 2 / e**2), abs=1e-6)


def test_composing_loss_by_hand():
    e = math.e
    identity = torch.eye(3)
    # composed = modified captions; original captions orthogonal to the query: logits (1, 0, 0 | 0)
    unrelated_captions = identity[[1, 2, 0]]
    loss = pseudo_word_composing_loss(identity, identity, unrelated_captions, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(e + 3) - 1, abs=1e-6)
    # the hard negative is the query itself (an unchanged reference): logits (1, 0, 0 | 1)
    loss = pseudo_word_composing_loss(identity, identity, identity, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 * e + 2) - 1, abs=1e-6)
    # at τ = 0.5, without captions: logits (2, 0, 0)
    assert pseudo_word_composing_loss(identity, identity, temperature=0.5).item() == pytest.approx(
        math.log(e**2 + 2) - 2, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        pseudo_word_composing_loss(identity, identity[:2])


# -- configuration, and the Combiner left as it was -------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("composer", "mlp", "ScotConfig.composer must be"),
    ("num_pseudo_tokens", 0, "ScotConfig.num_pseudo_tokens must be"),
    ("pseudo_word_prompt", "a photo of $", "ScotConfig.pseudo_word_prompt must hold"),
    ("pseudo_word_image_prompt", "a photo of $ and $", "ScotConfig.pseudo_word_image_prompt must hold"),
    ("soft_alignment_temperature", 0.0, "ScotConfig.soft_alignment_temperature must be"),
    ("pseudo_word_lora_state", "half", "ScotConfig.pseudo_word_lora_state must be"),
    ("pseudo_word_prompt_token_ids", {"prompt": [1]}, "pseudo_word_prompt_token_ids must have the keys"),
])
def test_invalid_pseudo_word_settings_are_refused(field, value, message):
    with pytest.raises(Exception, match=message):
        ScotConfig(**{field: value})


def test_a_saved_config_without_composer_is_a_combiner_model(tmp_path, backbone_folders):
    ScotModel.from_backbone(backbone_folders["clip"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    old = {key: value for key, value in config.items()
           if key != "composer" and not key.startswith(("pseudo_word", "num_pseudo", "soft_alignment", "composing"))}
    (tmp_path / "config.json").write_text(json.dumps(old))
    model = AutoModel.from_pretrained(tmp_path)
    assert model.config.composer == "combiner" and model.composer_accepts_text_embeds is True
    assert model.composer_image_inputs == ("image_embeds",) and model.merge_composer_adapters() == 0
    assert {name.split(".")[0] for name in _trainable(model)} == {"combiner"}
    assert not hasattr(model, "pseudo_word_mapper")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.get_composer_image_features(pixel_values)
        assert set(features) == {"image_embeds"}
        torch.testing.assert_close(features["image_embeds"], model.get_image_features(pixel_values=pixel_values))
    with pytest.raises(ValueError, match="belongs to the pseudo-word composer"):
        model.add_composer_adapters()


def test_from_backbone_with_a_loaded_model_needs_the_tokenizer(backbone_folders):
    folder = backbone_folders["clip"]
    encoder = ScotModel.from_backbone(folder).encoder
    with pytest.raises(ValueError, match="pass tokenizer="):
        ScotModel.from_backbone(encoder, composer="pseudo_word")
    model = ScotModel.from_backbone(encoder, composer="pseudo_word", tokenizer=AutoTokenizer.from_pretrained(folder))
    assert model.config.pseudo_word_prompt_token_ids["prompt"].count(PSEUDO_WORD_SLOT) == 1


def test_mapper_reads_a_convolutional_feature_map():
    from modeling_scot import PseudoWordMapper

    mapper = PseudoWordMapper(embed_dim=8, image_token_dim=6, token_embed_dim=16, num_pseudo_tokens=2, depth=1,
                              num_heads=4).eval()
    feature_map, pooled = torch.randn(3, 6, 2, 2), F.normalize(torch.randn(3, 8), dim=-1)
    tokens = mapper(pooled, feature_map)
    assert tokens.shape == (3, 2, 16)
    torch.testing.assert_close(mapper(pooled, feature_map.flatten(2).transpose(1, 2)), tokens, atol=0, rtol=0)


@pytest.mark.slow
def test_a_merged_pseudo_word_folder_loads_with_remote_code_without_the_package(backbone_folders, tmp_path):
    import subprocess

    from tests.modeling_scot.test_hub_route import REMOTE_LOAD, _clean_env

    folder = tmp_path / "m2c-remote"
    model = ScotModel.from_backbone(backbone_folders["clip"], composer="pseudo_word")
    processor = ScotProcessor.from_backbone(backbone_folders["clip"])
    model.add_composer_adapters()
    _perturb_adapters(model)
    model.merge_composer_adapters()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    result = subprocess.run([sys.executable, "-c", REMOTE_LOAD, str(folder)], cwd=tmp_path, env=_clean_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["model_class"].endswith(".ScotModel") and loaded["trainable"] == ["pseudo_word_mapper"]
    inputs = processor(images=[Image.new("RGB", (40, 40), (250, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 250))],
                       text=["make it blue", "make it red"], return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**inputs).composed_embeds
    torch.testing.assert_close(torch.tensor(loaded["composed"]), expected, atol=ATOL, rtol=0)


def test_the_grounding_gate_reads_the_modifications_own_embedding_for_the_pseudo_word_composer(pseudo_word):
    from modeling_scot import GalleryStatistics, nearest_gallery_images, text_grounding

    _, _, model, _, inputs = pseudo_word
    model.eval()
    gallery = torch.nn.functional.normalize(torch.randn(12, EMBED_DIM, generator=torch.Generator().manual_seed(4)),
                                            dim=-1)
    with torch.no_grad():
        images = model.get_image_features(pixel_values=inputs["pixel_values"])
        texts = model.get_text_features(**_text_inputs(inputs))
        plain = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
        looks, statistics = nearest_gallery_images(images, gallery, 2), GalleryStatistics.from_embeds(gallery)
        grounding = text_grounding(texts, looks, statistics)
        model.config.grounding_gate_neighbours = 2
        model.config.grounding_gate_threshold = float(grounding.max()) + 1.0  # every query gated
        gated, weight = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs),
                                                    gallery_neighbour_embeds=looks, gallery_statistics=statistics,
                                                    return_text_weight=True)
        model.config.grounding_gate_threshold = float(grounding.min()) - 1.0  # none gated
        open_gate = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs),
                                                gallery_neighbour_embeds=looks, gallery_statistics=statistics)
    torch.testing.assert_close(gated, images, atol=1e-6, rtol=0)
    assert weight is None  # no λ to report for this composer
    torch.testing.assert_close(open_gate, plain, atol=ATOL, rtol=0)


def test_the_novelty_gate_reads_the_modifications_own_embedding_for_the_pseudo_word_composer(pseudo_word):
    from modeling_scot import text_familiarity

    _, _, model, _, inputs = pseudo_word
    model.eval()
    bank = torch.nn.functional.normalize(torch.randn(6, EMBED_DIM, generator=torch.Generator().manual_seed(5)), dim=-1)
    with torch.no_grad():
        images = model.get_image_features(pixel_values=inputs["pixel_values"])
        familiarity = text_familiarity(model.get_text_features(**_text_inputs(inputs)), bank, 2)
        plain = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
        model.set_novelty_gate(bank, neighbours=2, threshold=float(familiarity.max()) + 0.01)  # every query novel
        gated = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
        model.set_novelty_gate(bank, neighbours=2, threshold=float(familiarity.min()) - 0.01)  # none
        open_gate = model.get_composed_features(pixel_values=inputs["pixel_values"], **_text_inputs(inputs))
    torch.testing.assert_close(gated, images, atol=1e-6, rtol=0)
    torch.testing.assert_close(open_gate, plain, atol=ATOL, rtol=0)
