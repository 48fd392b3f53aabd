"""`trainers.novelty_gate`: the bank of training modifications and θ from the validation slice."""

import pytest
import torch
import torch.nn.functional as F

from trainers.novelty_gate import calibrate_novelty_gate, novelty_gate_bank


class _Cache:
    def __init__(self, texts, text_rows):
        self.text_embeds = texts
        self.image_embeds = F.normalize(torch.randn(len(text_rows), texts.shape[1]), dim=-1)
        self.row_indices = {"image": torch.arange(len(text_rows)), "modification": torch.as_tensor(text_rows)}


class _Dataset:
    def __init__(self, texts, text_rows):
        self.cache = _Cache(texts, text_rows)


def test_the_bank_holds_each_distinct_training_modification_once_and_is_capped_by_a_seeded_sample():
    texts = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    dataset = _Dataset(texts * 3.0, [0, 1, 1, 2, 4, 4, 4])  # rows repeat texts; the cache's embeddings unnormalised
    bank = novelty_gate_bank(dataset)
    assert bank.shape == (4, 8)
    expected = F.normalize(texts * 3.0, dim=-1)[[0, 1, 2, 4]]  # normalised as the gate compares them
    assert {tuple(row.tolist()) for row in bank} == {tuple(row.tolist()) for row in expected}
    capped = novelty_gate_bank(dataset, max_size=2, seed=1)
    assert capped.shape == (2, 8) and torch.equal(capped, novelty_gate_bank(dataset, max_size=2, seed=1))
    assert all(any(torch.equal(row, kept) for kept in bank) for row in capped)


def test_alpha_outside_the_open_unit_interval_and_a_too_small_bank_are_refused():
    texts = F.normalize(torch.randn(3, 8), dim=-1)
    dataset = _Dataset(texts, [0, 1, 2])
    with pytest.raises(ValueError, match=r"novelty_gate_alpha must be in \(0, 1\)"):
        calibrate_novelty_gate(None, dataset, dataset, alpha=0.0)
    model = type("Model", (), {"config": type("Config", (), {"novelty_gate_neighbours": 0})()})()
    with pytest.raises(ValueError, match="10-th nearest training modification: the training split has 3 distinct"):
        calibrate_novelty_gate(model, dataset, dataset, alpha=0.05)
