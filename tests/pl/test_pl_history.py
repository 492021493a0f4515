from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

import cellformers as cf

matplotlib.use("Agg")


def _hist(ratio_below_one: bool):
    t = [0.7, 0.7, 0.7]
    p = [0.8, 0.65, 0.6] if ratio_below_one else [0.8, 0.75, 0.72]
    return {
        "train_loss_epoch": pd.DataFrame({"train_loss_epoch": [1.0, 0.8, 0.7]}),
        "validation_loss": pd.DataFrame({"validation_loss": [1.1, 0.9, 0.8]}),
        "pretext_loss_validation": pd.DataFrame({"pretext_loss_validation": p}),
        "trivial_loss_validation": pd.DataFrame({"trivial_loss_validation": t}),
        "lr": pd.DataFrame({"lr": [1e-4, 1e-3, 5e-4]}),
        "ecs_loss_validation": pd.DataFrame({"ecs_loss_validation": [0.1, 0.1, 0.1]}),
    }


@pytest.mark.parametrize(("below", "verdict"), [(True, "beats"), (False, "does not beat")])
def test_history_panels_and_verdict(below, verdict):
    axes = cf.pl.history(_hist(below), show=False)
    assert [ax.get_ylabel() for ax in axes] == ["loss", "pretext loss", "learning rate"]
    assert axes[1].get_title().startswith(f"validation {verdict} trivial")
    styles = {line.get_label(): line.get_linestyle() for line in axes[1].get_lines()}
    assert styles["trivial_loss_validation"] == "--"


def test_history_extra_keys_and_errors(tmp_path):
    fig = cf.pl.history(_hist(True), keys=["ecs_loss_validation"], return_fig=True, save=tmp_path / "h.png")
    assert len(fig.axes) == 4
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="`keys` has"):
        cf.pl.history(_hist(True), keys=["nope"], show=False)
    with pytest.raises(ValueError, match="no training history"):
        cf.pl.history({}, show=False)


def test_history_draws_into_given_axes():
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    out = cf.pl.history(_hist(True), ax=list(axes), show=False)
    assert out == list(axes)
    with pytest.raises(ValueError, match="one per panel"):
        cf.pl.history(_hist(True), ax=axes[0], show=False)
    plt.close(fig)
