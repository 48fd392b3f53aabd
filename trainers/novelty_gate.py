"""Calibrating the text novelty gate (`ScotConfig.novelty_gate_*`, docs/ablations.md's eighth round) after training.

The gate answers a query with the reference image alone where its modification text is unlike the texts the
composer was trained on: the cosine to its k-th nearest training modification (`modeling_scot.text_familiarity`)
below θ. The bank is the training split's distinct modification embeddings (a seeded sample of `MAX_BANK_SIZE` beyond
that); θ is the α quantile of the validation rows' familiarity, so a fraction α of texts like the training ones are
gated (α 0.05: 95% kept, the out-of-distribution literature's usual operating point).
"""

import torch

from modeling_scot import text_familiarity
from trainers.grounding_gate import floor_recall, validation_embeds

DEFAULT_NOVELTY_GATE_NEIGHBOURS = 10
MAX_BANK_SIZE = 8192


def novelty_gate_bank(train_dataset, max_size: int = MAX_BANK_SIZE, seed: int = 0) -> torch.Tensor:
    """`[N, d]`: the distinct normalised modification embeddings of a cached training split (`CachedTripletDataset`),
    at most `max_size` (a seeded sample when there are more)."""
    texts = torch.unique(validation_embeds(train_dataset)[1], dim=0)
    if len(texts) > max_size:
        texts = texts[torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:max_size]]
    return texts


def calibrate_novelty_gate(model, train_dataset, eval_dataset, alpha: float, neighbours: int | None = None,
                           seed: int = 0, max_bank_size: int = MAX_BANK_SIZE) -> dict[str, float]:
    """Give `model` the novelty gate: its bank from `train_dataset`, θ the `alpha` quantile of `eval_dataset`'s
    familiarity (k = `neighbours`, else the config's, else `DEFAULT_NOVELTY_GATE_NEIGHBOURS`). Returns, for the
    metrics, `threshold`, `gated_fraction` (of the validation rows), `bank_size`, and the composed -> floor image R@1
    over the training images without and with the gate (`floor_R@1_ungated`, `floor_R@1_gated`; needs the
    validation rows' floor probe)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"novelty_gate_alpha must be in (0, 1), got {alpha}.")
    neighbours = neighbours or model.config.novelty_gate_neighbours or DEFAULT_NOVELTY_GATE_NEIGHBOURS
    bank = novelty_gate_bank(train_dataset, max_bank_size, seed)
    if len(bank) < neighbours:
        raise ValueError(f"The novelty gate compares a text with its {neighbours}-th nearest training modification: "
                         f"the training split has {len(bank)} distinct ones.")
    gallery = train_dataset.cache.image_embeds
    model.config.novelty_gate_neighbours = 0  # the ungated recall first
    ungated = floor_recall(model, eval_dataset, gallery)[0]
    texts = validation_embeds(eval_dataset)[1]
    familiarity = text_familiarity(texts, bank, neighbours)
    threshold = float(familiarity.quantile(alpha))
    model.set_novelty_gate(bank, neighbours, threshold)
    return {"threshold": threshold, "gated_fraction": float((familiarity < threshold).float().mean()),
            "bank_size": float(len(bank)), "floor_R@1_ungated": ungated,
            "floor_R@1_gated": floor_recall(model, eval_dataset, gallery)[0]}


__all__ = ["DEFAULT_NOVELTY_GATE_NEIGHBOURS", "MAX_BANK_SIZE", "calibrate_novelty_gate", "novelty_gate_bank"]
