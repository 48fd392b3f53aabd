"""demo/ablations.py: every loss gets the same search budget, and the report is built from the measured runs."""

from demo import ablations


def test_every_variant_gets_the_same_number_of_settings_over_the_same_epochs_and_rates():
    grids = {name: ablations.grid(name) for name in ablations.VARIANTS}
    assert len({len(settings) for settings in grids.values()}) == 1
    for name, settings in grids.items():
        (knob, values), fixed = ablations.VARIANTS[name][2:]
        assert all(setting.items() >= fixed.items() for setting in settings)
        assert {setting["num_train_epochs"] for setting in settings} == set(ablations.EPOCHS)
        assert {setting["learning_rate"] for setting in settings} == set(ablations.LEARNING_RATES)
        assert {setting[knob] for setting in settings} == set(values)
    assert len(ablations.grid("scot+text", (1e-4, 3e-4))) == 2 * len(grids["scot+text"])


def test_unknown_variant_is_refused_by_name():
    import pytest

    with pytest.raises(ValueError, match=r"scot\+nothing"):
        ablations.run(ablations.AblationArguments(output_dir="/nonexistent", variants=["scot+nothing"]))


def test_report_tables_give_mean_and_spread_over_seeds_and_every_searched_setting():
    per_kind = {"colour": {"R@1": 10.0, "R@10": 50.0, "Rsubset@1": 30.0},
                "count": {"R@1": 20.0, "R@10": 60.0, "Rsubset@1": 40.0}}
    shifted = {kind: {key: value + 2 for key, value in metrics.items()} for kind, metrics in per_kind.items()}
    setting = {"num_train_epochs": 8, "learning_rate": 1e-4, "margin": 0.2}
    results = {
        "baselines": {"image": per_kind},
        "search": {"scot+text": [{"setting": setting, "validation": 33.3, "benchmark": per_kind}]},
        "selected": {"scot+text": setting},
        "final": {"scot+text": [{"seed": 0, "validation": 33.3, "validation_floor_gap": -1.0, "benchmark": per_kind},
                                {"seed": 1, "validation": 35.3, "validation_floor_gap": 1.0, "benchmark": shifted}]},
    }
    report = ablations.format_report(results)
    assert "| baseline: image | 10.0 | 20.0 | 15.0 | | |" in report
    # seeds 10 and 12 on colour: mean 11, sample std 1.4; average over kinds 15 and 17: 16 ± 1.4; validation
    # 33.3 and 35.3: 34.3 ± 1.4; floor gaps -1 and 1: 0 ± 1.4
    assert ("| scot+text (ep 8, lr 0.0001, margin 0.2) | 11.0 ± 1.4 | 21.0 ± 1.4 | 16.0 ± 1.4 | 34.3 ± 1.4 | "
            "0.0 ± 1.4 |") in report
    assert "| scot+text | ep 8, lr 0.0001, margin 0.2 | 33.3 | 15.0 |" in report
