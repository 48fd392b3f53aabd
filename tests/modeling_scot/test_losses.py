"""The SCOT loss (Eq. 4-9) and the InfoNCE option against values worked out by hand on a 3 x 3 example.

Composed embeddings are the unit vectors e1, e2, e3, so S(V_c^i, y) is just coordinate i of a unit vector y: every
cosine below is read straight off the vectors chosen here.
"""

import math

import pytest
import torch

from modeling_scot import ScotConfig, compute_scot_loss, image_floor_loss, infonce_loss, scot_loss

COMPOSED = torch.eye(3, dtype=torch.float64)
# Row j is T_u^j, so S(V_c^i, T_u^j) = MODIFIED[j][i]:
#   S = [[0.60, 0.00, 0.15],
#        [0.80, 0.60, 0.00],
#        [0.00, 0.80, c   ]]   with c = sqrt(1 - 0.15^2)
C = math.sqrt(1 - 0.15**2)
MODIFIED = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.15, 0.0, C]], dtype=torch.float64)
# Row j is T^j (original captions), S(V_c^i, T^j) = CAPTIONS[j][i]:
#   [[0.90, 0.00, 0.10],
#    [0.00, 1.00, 0.30],
#    [d,    0.00, e   ]]   with d = sqrt(1 - 0.9^2), e = sqrt(1 - 0.1^2 - 0.3^2)
D = math.sqrt(1 - 0.9**2)
E = math.sqrt(1 - 0.1**2 - 0.3**2)
CAPTIONS = torch.tensor([[0.9, 0.0, D], [0.0, 1.0, 0.0], [0.1, 0.3, E]], dtype=torch.float64)

exp = math.exp
# Eq. 4: one log over the sum of the three positives exp(0.6), exp(0.6), exp(c).
L_POS = -math.log(exp(0.6) + exp(0.6) + exp(C))
# Eq. 7: diagonal terms are exp(0 * S) = 1 (three of them); off-diagonal S > 0.2 keep exp(S): S[1,0] = S[2,1] = 0.8;
# the other off-diagonal ones (0.0, 0.0, 0.15 masked, 0.0) are exp(0) = 1 each (four).
L_NEG_MODIFIED = math.log(3 * 1 + 2 * exp(0.8) + 4 * 1)
# Eq. 8 extra term, over all nine (i, j): kept (> 0.2) 0.9, d, 1.0, 0.3, e; masked to exp(0) = 1: 0.0, 0.0, 0.1, 0.0.
L_NEG_CAPTIONS = math.log(exp(0.9) + exp(D) + exp(1.0) + exp(0.3) + exp(E) + 4 * 1)


def test_hand_values_are_above_and_below_the_margin_as_claimed():
    similarity = COMPOSED @ MODIFIED.T
    assert similarity[0, 2] == pytest.approx(0.15)  # a non-zero negative that the margin removes
    assert D > 0.2 and E > 0.2


def test_scot_loss_matches_hand_computation():
    loss = scot_loss(COMPOSED, MODIFIED, CAPTIONS, alpha_pos=10.0, alpha_neg=0.1, margin=0.2)
    expected = 10.0 * L_POS + 0.1 * (L_NEG_MODIFIED + L_NEG_CAPTIONS)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_scot_loss_without_caption_negatives_is_eq7():
    loss = scot_loss(COMPOSED, MODIFIED, None, alpha_pos=1.0, alpha_neg=1.0, margin=0.2)
    assert loss.item() == pytest.approx(L_POS + L_NEG_MODIFIED, abs=1e-9)


def test_margin_mask_changes_which_negatives_count():
    # With margin 0.1 the 0.15 negative is kept: exp(0.15) replaces one of the four exp(0) terms.
    loss = scot_loss(COMPOSED, MODIFIED, None, alpha_pos=0.0, alpha_neg=1.0, margin=0.1)
    assert loss.item() == pytest.approx(math.log(3 + 2 * exp(0.8) + exp(0.15) + 3), abs=1e-9)
    # With margin 0.9 nothing off-diagonal survives: nine exp(0) terms.
    loss = scot_loss(COMPOSED, MODIFIED, None, alpha_pos=0.0, alpha_neg=1.0, margin=0.9)
    assert loss.item() == pytest.approx(math.log(9), abs=1e-9)


def test_scot_loss_uses_cosine_so_scale_does_not_matter():
    scaled = scot_loss(3.0 * COMPOSED, 0.5 * MODIFIED, 7.0 * CAPTIONS)
    assert scaled.item() == pytest.approx(scot_loss(COMPOSED, MODIFIED, CAPTIONS).item(), abs=1e-9)


def test_masked_negatives_pass_no_gradient():
    composed = COMPOSED.clone().requires_grad_(True)
    scot_loss(composed, MODIFIED, None, alpha_pos=0.0, alpha_neg=1.0, margin=0.9).backward()
    assert torch.count_nonzero(composed.grad) == 0


def test_infonce_matches_hand_computation():
    temperature = 0.5
    rows = [[0.6, 0.0, 0.15], [0.8, 0.6, 0.0], [0.0, 0.8, C]]  # S from the module docstring
    expected = 0.0
    for i, row in enumerate(rows):
        expected += -row[i] / temperature + math.log(sum(exp(s / temperature) for s in row))
    expected /= 3
    loss = infonce_loss(COMPOSED, MODIFIED, temperature=temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_compute_scot_loss_follows_the_config():
    scot = ScotConfig(alpha_pos=10.0, alpha_neg=0.1, margin=0.2)
    assert compute_scot_loss(scot, COMPOSED, MODIFIED, CAPTIONS).item() == pytest.approx(
        10.0 * L_POS + 0.1 * (L_NEG_MODIFIED + L_NEG_CAPTIONS), abs=1e-9
    )
    infonce = ScotConfig(loss_type="infonce", infonce_temperature=0.5)
    assert compute_scot_loss(infonce, COMPOSED, MODIFIED, CAPTIONS).item() == pytest.approx(
        infonce_loss(COMPOSED, MODIFIED, temperature=0.5).item(), abs=1e-12
    )


@pytest.mark.parametrize("loss_fn", [scot_loss, infonce_loss])
def test_losses_reject_mismatched_shapes(loss_fn):
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(COMPOSED, MODIFIED[:2])


# -- the "split" reading (ours, issue 14) and InfoNCE with caption negatives, on the same 3 x 3 case ---------------


def test_scot_split_reading_matches_hand_computation():
    from modeling_scot import scot_split_loss

    # mean positive; off-diagonal negatives above 0.2 only: S[1,0] = S[2,1] = 0.8 (0.15 and the zeros add nothing,
    # nor does the diagonal); captions above 0.2: 0.9, 1.0, 0.3, d, e.
    positive = -(0.6 + 0.6 + C) / 3
    negative_modified = math.log(2 * exp(0.8))
    negative_captions = math.log(exp(0.9) + exp(1.0) + exp(0.3) + exp(D) + exp(E))
    loss = scot_split_loss(COMPOSED, MODIFIED, CAPTIONS, alpha_pos=10.0, alpha_neg=0.1, margin=0.2)
    assert loss.item() == pytest.approx(10.0 * positive + 0.1 * (negative_modified + negative_captions), abs=1e-9)
    # no hard negative at all: only the positive term is left, and it still has a gradient
    composed = COMPOSED.clone().requires_grad_()
    loss = scot_split_loss(composed, MODIFIED, None, alpha_pos=1.0, alpha_neg=1.0, margin=0.95)
    assert loss.item() == pytest.approx(positive, abs=1e-9)
    loss.backward()
    assert composed.grad.abs().sum() > 0


def test_infonce_with_caption_negatives_matches_hand_computation():
    rows = [  # logits at temperature 1: [S(V_c^i, T_u^j) for j | S(V_c^i, T^j) for j], label i
        [0.6, 0.0, 0.15, 0.9, 0.0, 0.1],
        [0.8, 0.6, 0.0, 0.0, 1.0, 0.3],
        [0.0, 0.8, C, D, 0.0, E],
    ]
    expected = sum(math.log(sum(exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / 3
    loss = infonce_loss(COMPOSED, MODIFIED, temperature=1.0, caption_embeds=CAPTIONS)
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    config = ScotConfig(loss_type="infonce_captions", infonce_temperature=1.0)
    assert compute_scot_loss(config, COMPOSED, MODIFIED, CAPTIONS).item() == pytest.approx(expected, abs=1e-9)
    config = ScotConfig(loss_type="scot_split")
    from modeling_scot import scot_split_loss

    assert compute_scot_loss(config, COMPOSED, MODIFIED, CAPTIONS).item() == pytest.approx(
        scot_split_loss(COMPOSED, MODIFIED, CAPTIONS).item(), abs=1e-12)


def test_image_floor_matches_hand_computation_and_binds_only_where_the_reference_is_better():
    # 2-d, two rows, targets R = e1, e2. Row 0: the composed query at 60° from its target, the reference on it;
    # row 1: the composed query on its target, the reference at 90°.
    angle = math.pi / 3
    composed = torch.tensor([[math.cos(angle), math.sin(angle)], [0.0, 1.0]], requires_grad=True)
    references = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    targets = torch.eye(2)
    tau = 0.5

    def row_loss(query, row):  # -log softmax_j(cos(query, R_j) / tau)_row
        logits = [query[0] / tau, query[1] / tau]  # R = identity, queries are unit vectors
        return -(logits[row] - math.log(math.exp(logits[0]) + math.exp(logits[1])))

    c0, c1 = row_loss([math.cos(angle), math.sin(angle)], 0), row_loss([0.0, 1.0], 1)
    v0, v1 = row_loss([1.0, 0.0], 0), row_loss([1.0, 0.0], 1)
    assert c0 > v0 and c1 < v1  # row 0 is worse than its reference, row 1 better
    expected = (max(0.0, c0 - v0) + max(0.0, c1 - v1)) / 2
    loss = image_floor_loss(composed, references, targets, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert composed.grad[1].abs().sum() == 0  # row 1 is above the floor: no pull towards its reference
    assert composed.grad[0].abs().sum() > 0
    # a composed query equal to the reference costs nothing
    assert image_floor_loss(references, references, targets).item() == 0.0
