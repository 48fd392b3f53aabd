"""`python -m demo.kind_transfer`: the ninth round's rule, its report, and the kinds it holds out."""

import pytest

from demo.kind_transfer import ALPHAS, NO_GATE, format_report, held_out_kinds, option_scores, select_alpha


def _entry(reference, ungated, gated, shares):
    entry = {"rows": 100, "reference": reference, NO_GATE: ungated}
    for alpha, recall, share in zip(ALPHAS, gated, shares):
        entry[str(alpha)] = {"R@1": recall, "gated": share}
    return entry


def _fold(kind, unseen_gated, seen_gated, unseen_ungated=50.0, seen_ungated=60.0):
    return {"kind": kind, "train_rows": 900, "bank_size": 800, "seconds": 1.0,
            "thresholds": {str(alpha): 0.3 for alpha in ALPHAS},
            "unseen": _entry(52.0, unseen_ungated, unseen_gated, (2, 10, 20, 40, 70)),
            "seen": _entry(48.0, seen_ungated, seen_gated, (1, 5, 10, 25, 50))}


def test_the_rule_takes_the_best_mean_of_unseen_and_seen_kinds_over_the_folds():
    # α 0.1 gains 4 points unseen and costs 2 seen: score (54 + 58) / 2 = 56 (ungated 55)
    folds = [_fold("count", (50, 51, 54, 54, 52), (60, 60, 58, 55, 50)),
             _fold("colour", (50, 51, 54, 54, 52), (60, 60, 58, 55, 50))]
    scores = option_scores(folds)
    assert scores[NO_GATE] == {"unseen": 50.0, "seen": 60.0, "score": 55.0}
    assert scores["0.1"]["score"] == pytest.approx(56.0)
    assert select_alpha(folds) == "0.1"
    # the mean over the folds decides, not one fold: here the gate's gain on one fold is the other's loss
    mixed = [_fold("count", (50, 50, 56, 50, 50), (60, 60, 60, 60, 60)),
             _fold("colour", (50, 50, 44, 50, 50), (60, 60, 60, 60, 60))]
    assert select_alpha(mixed) == NO_GATE  # a tie with no gate: no gate, the first listed


def test_a_tie_between_gates_goes_to_the_more_lenient_alpha():
    folds = [_fold("count", (50, 53, 53, 50, 50), (60, 60, 60, 58, 50))]
    assert select_alpha(folds) == "0.05"


def test_the_report_has_every_fold_the_means_and_the_decision():
    folds = [_fold("count", (50, 51, 54, 54, 52), (60, 60, 58, 55, 50)),
             _fold("colour", (50, 51, 54, 54, 52), (60, 60, 58, 55, 50))]
    results = {"alphas": list(ALPHAS), "neighbours": 10, "min_rows": 50, "epochs": 20, "folds": folds,
               "scores": option_scores(folds), "selected": select_alpha(folds)}
    report = format_report(results)
    assert "| count | 100 | 52.0 | 50.0 | 50.0 | 51.0 | 54.0 | 54.0 | 52.0 | 48.0 | 60.0 |" in report
    assert "| (reference image alone) | 52.00 | 48.00 | 50.00 |" in report
    assert "| no gate | 50.00 | 60.00 | 55.00 |" in report
    assert "| novelty gate α 0.1 | 54.00 | 58.00 | 56.00 |" in report
    assert "| colour | 2 / 1 | 10 / 5 | 20 / 10 | 40 / 25 | 70 / 50 |" in report
    assert "**the novelty gate at α 0.1**" in report


def test_held_out_kinds_counts_the_kind_column_and_drops_small_kinds(tmp_path):
    from tests.trainers.triplet_fixtures import save_triplet_dataset

    folder = save_triplet_dataset(tmp_path / "kinds", with_kinds=True)  # 48 colour rows, 16 size rows
    assert held_out_kinds(folder, min_rows=10) == {"colour": 48, "size": 16}
    assert held_out_kinds(folder, min_rows=20) == {"colour": 48}
