"""The text novelty gate (`ScotConfig.novelty_gate_*`): the k-th nearest training text, the gated query through the
one entry point, never in training, and the bank saved with the weights."""

import pytest
import torch
import torch.nn.functional as F

from modeling_scot import ScotConfig, ScotModel, text_familiarity
from tests.tiny_backbones import EMBED_DIM


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_familiarity_is_the_cosine_to_the_kth_nearest_bank_text_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    texts = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # text 1: cosines 1, 0, -1, 0.6 -> 2nd largest 0.6; text 2: 0, -1, 0, -0.8 -> 2nd largest 0
    torch.testing.assert_close(text_familiarity(texts, bank, 2, block_size=1), torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(text_familiarity(texts, bank, 1), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="5-th nearest training text: the bank has 4"):
        text_familiarity(texts, bank, 5)


def test_the_gate_answers_unfamiliar_texts_with_the_image_and_never_trains(anchored_scot_model):
    images, texts, bank = _unit(6, EMBED_DIM), _unit(6, EMBED_DIM, seed=1), _unit(20, EMBED_DIM, seed=2)
    with torch.no_grad():
        plain, plain_weight = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                                               return_text_weight=True)
    familiarity = text_familiarity(texts, bank, 3)
    ordered = familiarity.sort().values
    anchored_scot_model.set_novelty_gate(bank, neighbours=3, threshold=float(ordered[2] + ordered[3]) / 2)
    assert anchored_scot_model.config.novelty_gate_bank_size == 20
    torch.testing.assert_close(anchored_scot_model.text_familiarity(texts), familiarity)
    with torch.no_grad():
        gated, gated_weight = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts,
                                                               return_text_weight=True)
    novel = familiarity < anchored_scot_model.config.novelty_gate_threshold
    assert int(novel.sum()) == 3
    torch.testing.assert_close(gated[novel], images[novel])  # the image-only query, λ 0
    torch.testing.assert_close(gated[~novel], plain[~novel])
    assert (gated_weight[novel] == 0).all() and torch.equal(gated_weight[~novel], plain_weight[~novel])
    anchored_scot_model.train()  # training composes every row: the gate is for retrieval
    anchored_scot_model.combiner.eval()  # no dropout, to compare with the eval-mode queries
    with torch.no_grad():
        training = anchored_scot_model.get_composed_features(image_embeds=images, text_embeds=texts)
    torch.testing.assert_close(training, plain)


def test_the_bank_and_gate_are_saved_as_safetensors_and_come_back(anchored_scot_model, tmp_path):
    bank = _unit(12, EMBED_DIM, seed=3)
    anchored_scot_model.set_novelty_gate(bank * 2.0, neighbours=4, threshold=0.25)  # normalised on the way in
    anchored_scot_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = ScotModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.novelty_gate_neighbours, loaded.config.novelty_gate_bank_size) == (4, 12)
    assert loaded.config.novelty_gate_threshold == 0.25
    torch.testing.assert_close(loaded.novelty_gate_text_embeds, bank)
    off = ScotModel.from_pretrained(tmp_path, novelty_gate_neighbours=0)  # the same weights without the gate
    assert off.config.novelty_gate_neighbours == 0 and off.config.novelty_gate_bank_size == 12


def test_the_gate_names_what_it_lacks(anchored_scot_model):
    with pytest.raises(ValueError, match="has no novelty gate"):
        anchored_scot_model.text_familiarity(_unit(2, EMBED_DIM))
    with pytest.raises(ValueError, match=rf"bank must be \[texts >= 3, {EMBED_DIM}\], got \[2, {EMBED_DIM}\]"):
        anchored_scot_model.set_novelty_gate(_unit(2, EMBED_DIM), neighbours=3, threshold=0.0)
    with pytest.raises(Exception, match="novelty_gate_neighbours must be an integer >= 0"):
        ScotConfig(novelty_gate_neighbours=-1)
    with pytest.raises(Exception, match="needs a bank of at least as many training texts"):
        ScotConfig(novelty_gate_neighbours=5, novelty_gate_bank_size=3)
    waiting = ScotConfig(novelty_gate_neighbours=5)  # k chosen before training, the bank to come: no gate yet
    assert waiting.novelty_gate_bank_size == 0
    with pytest.raises(Exception, match="novelty_gate_threshold is a cosine"):
        ScotConfig(novelty_gate_threshold=1.5)
