from pathlib import Path

import refineg
from refineg.config import CONFIG_DIR, load_config
from refineg.resources import builtin_path, config_root, resolve_path

ROOT = Path(__file__).resolve().parents[1]


def test_config_root_is_inside_the_package_and_the_top_level_link_points_at_it():
    assert config_root() == Path(refineg.__file__).parent / "configs" == CONFIG_DIR
    assert (config_root() / "default.yaml").is_file()
    assert (ROOT / "configs").resolve() == config_root().resolve()


def test_a_missing_configs_path_falls_back_to_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("configs/sweeps/heads.yaml") == builtin_path("sweeps/heads.yaml")
    assert resolve_path("configs/prompts/grounding") == builtin_path("prompts/grounding")
    assert resolve_path("configs/nope.yaml") == Path("configs/nope.yaml")  # the error names what was typed
    assert resolve_path("sweeps/heads.yaml") == Path("sweeps/heads.yaml")  # only configs/... is looked up


def test_a_users_own_path_wins_where_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "configs" / "sweeps" / "heads.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("name: mine\n")
    assert resolve_path("configs/sweeps/heads.yaml") == Path("configs/sweeps/heads.yaml")
    assert resolve_path(own) == own


def test_the_default_run_comes_from_default_yaml_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config([]).data.batch_size == 16
    assert load_config(["data=twitter_gmner"]).data.name == "twitter_gmner"
