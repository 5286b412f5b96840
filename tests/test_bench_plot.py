"""bench/plot_selftrain.py: the ``--mark`` points lie inside the panel they are drawn on."""

import json
import sys

import pytest

from tests.conftest import load_script


def _plot_module():
    return load_script("bench/plot_selftrain.py", "plot_selftrain")


@pytest.mark.parametrize("zoom", [[], ["--zoom", "full"]], ids=["main", "zoom"])
def test_a_mark_above_the_hline_stays_in_the_figure(tmp_path, monkeypatch, zoom):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rounds = {str(r): {"dev_mner_f1": {"mean": 70.0 + r, "std": 0.2}} for r in (0, 1)}
    (tmp_path / "summary.json").write_text(json.dumps({"groups": {"full-soft": {"rounds": rounds}}}))
    out = tmp_path / "fig.png"
    argv = ["plot_selftrain.py", f"full data={tmp_path / 'summary.json'}", "--out", str(out)]
    argv += ["--hline", "72=target", "--mark", "1=75=ensemble", *zoom]
    monkeypatch.setattr(sys, "argv", argv)
    _plot_module().main()
    try:
        fig = plt.gcf()
        panel = fig.axes[-1]  # the zoom panel, or the only one
        assert len(fig.axes) == (2 if zoom else 1)
        star = next(line for line in panel.get_lines() if line.get_label() == "ensemble")
        assert list(star.get_xdata()) == [1] and list(star.get_ydata()) == [75.0]
        low, high = panel.get_ylim()
        assert low <= 70.0 - 0.2 and high >= 75.0  # the lowest error bar and the mark are both inside
        assert out.stat().st_size > 1000
    finally:
        plt.close("all")


@pytest.mark.parametrize("flag", [["--hline", "high=target"], ["--mark", "one=75=ensemble"]], ids=["hline", "mark"])
def test_a_malformed_value_is_one_error_line(tmp_path, monkeypatch, flag):
    pytest.importorskip("matplotlib")
    rounds = {"0": {"dev_mner_f1": {"mean": 70.0, "std": 0.2}}}
    (tmp_path / "summary.json").write_text(json.dumps({"groups": {"g": {"rounds": rounds}}}))
    argv = ["plot_selftrain.py", f"g={tmp_path / 'summary.json'}", "--out", str(tmp_path / "fig.png"), *flag]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=rf"error: '{flag[1]}': expected"):
        _plot_module().main()
    assert not (tmp_path / "fig.png").exists()
