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


def _soup_summary(path, with_soup=True):
    soup = {
        "g500-a": {
            "0": {"members": [68.0, 68.5], "soup": 69.0, "checkpoint": "x"},
            "1": {"members": [70.0, 71.0], "soup": 71.5, "checkpoint": "y"},
        }
    }
    summary = {"groups": {}, "student_ensemble": {"g500-a": {"dev_mner_f1": 72.0}}}
    path.write_text(json.dumps(summary | ({"soup": soup} if with_soup else {})))
    return path


def test_soup_plot_draws_members_soup_ensemble_and_the_gain_line(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    summary = _soup_summary(tmp_path / "summary.json")
    out = tmp_path / "soups.png"
    argv = ["plot_soup.py", f"500 gold={summary}", "--out", str(out), "--gain", "g500=2.5", "--target", "full=78.5"]
    monkeypatch.setattr(sys, "argv", argv)
    load_script("bench/plot_soup.py", "plot_soup").main()
    try:
        (ax,) = plt.gcf().axes
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["soup (weight average)"].get_ydata()) == [69.0]  # the first column's diamond
        diamonds = [list(li.get_ydata()) for li in ax.get_lines() if li.get_marker() == "D"]
        assert diamonds == [[69.0], [71.5]]
        assert list(lines["ensemble (all taggers run)"].get_ydata()) == [72.0]  # the last round only
        gain = [c for c in ax.collections if c.get_label() == "round 0 mean + 2.5"]
        assert len(gain) == 1 and gain[0].get_segments()[0][0][1] == pytest.approx(68.25 + 2.5)
        assert not [c for c in ax.collections if c.get_label().startswith("target")]  # no group starts with "full"
        assert out.stat().st_size > 1000
    finally:
        plt.close("all")


def test_soup_plot_refuses_a_summary_without_soups_and_bad_numbers(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    bare = _soup_summary(tmp_path / "bare.json", with_soup=False)
    module = load_script("bench/plot_soup.py", "plot_soup")
    for argv, message in [
        ([f"t={bare}"], "has no soups: run bench/selftrain.py with --soup"),
        ([f"t={_soup_summary(tmp_path / 's.json')}", "--gain", "g500=lots"], "--gain 'g500=lots': expected"),
    ]:
        monkeypatch.setattr(sys, "argv", ["plot_soup.py", *argv, "--out", str(tmp_path / "f.png")])
        with pytest.raises(SystemExit, match=message):
            module.main()
    assert not (tmp_path / "f.png").exists()


def test_soup_plot_collects_summaries_of_one_title_in_one_panel(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    first = _soup_summary(tmp_path / "a.json")
    second = json.loads(first.read_text())
    second["soup"] = {"g500-b": {"0": {"members": [60.0, 61.0], "soup": 62.0}, "1": {"members": [63.0], "soup": 64.5}}}
    second_path = tmp_path / "b.json"
    second_path.write_text(json.dumps(second))
    argv = ["plot_soup.py", f"gpu={first}", f"cpu={first}", f"gpu={second_path}", "--out", str(tmp_path / "f.png")]
    monkeypatch.setattr(sys, "argv", argv)
    load_script("bench/plot_soup.py", "plot_soup").main()
    try:
        gpu, cpu = plt.gcf().axes
        assert gpu.get_title() == "gpu" and cpu.get_title() == "cpu"
        diamonds = [li.get_ydata()[0] for li in gpu.get_lines() if li.get_marker() == "D"]
        assert diamonds == [69.0, 71.5, 62.0, 64.5]
        assert [t.get_text() for t in gpu.get_xticklabels()][2] == "g500-b\nround 0"
        assert len([li for li in cpu.get_lines() if li.get_marker() == "D"]) == 2
    finally:
        plt.close("all")


def test_soup_plot_gain_line_uses_the_round_0_of_its_own_summary_when_groups_share_a_name(tmp_path, monkeypatch):
    """Two summaries with a group of one name in one panel: each gain line sits on its own summary's round 0."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    first = _soup_summary(tmp_path / "a.json")  # g500-a, round 0 mean 68.25
    second = json.loads(first.read_text())
    second["soup"]["g500-a"]["0"]["members"] = [60.0, 61.0]  # the same group name, round 0 mean 60.5
    second_path = tmp_path / "b.json"
    second_path.write_text(json.dumps(second))
    argv = ["plot_soup.py", f"t={first}", f"t={second_path}", "--out", str(tmp_path / "f.png"), "--gain", "g500=2.5"]
    monkeypatch.setattr(sys, "argv", argv)
    load_script("bench/plot_soup.py", "plot_soup").main()
    try:
        (ax,) = plt.gcf().axes
        gain = [c for c in ax.collections if c.get_label() == "round 0 mean + 2.5"]
        assert [c.get_segments()[0][0][1] for c in gain] == [pytest.approx(70.75), pytest.approx(63.0)]
    finally:
        plt.close("all")
