import logging
import pickle

from omegaconf import OmegaConf
from PIL import Image

from refineg.llm import LLMConfig, build_llm_backend, create_llm_backend, user

SECRET = "sk-test-9f2c7a1e5b3d4c6e8a0b2d4f6a8c0e1f"


def test_api_key_never_leaves_the_client(chat_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REFINEG_SECRET_KEY", SECRET)
    chat_server.expected_key = SECRET  # the server refuses any other key: proves the key was sent
    run_dir = tmp_path / "run"
    cfg = LLMConfig(
        model="m", base_url=chat_server.base_url, api_key_env="REFINEG_SECRET_KEY",
        cache_path=str(run_dir / "cache.sqlite"), backoff_base_s=0.01, max_retries=1,
    )  # fmt: skip
    chat_server.rules["leak"] = ["echo_auth"]  # this answer repeats the Authorization header back
    chat_server.rules["flaky"] = ["500", "500"]
    with caplog.at_level(logging.DEBUG):
        llm = build_llm_backend(cfg, run_dir=run_dir)
        results = llm.chat_many(
            [[user("ok")], [user("leak")], [user("flaky")], [user(Image.new("RGB", (8, 8)), "img")]], progress=False
        )
        llm.close()
    assert [r.status for r in results] == ["ok", "failed", "failed", "ok"]
    assert chat_server.counts["ok"] == 1
    assert "Authorization: Bearer ***" in results[1].error  # the leaky server's echo, redacted
    for r in results:
        assert SECRET not in repr(r)
    assert SECRET not in caplog.text
    assert "Authorization: Bearer ***" in caplog.text
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"cache.sqlite", "llm_usage.json"}
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    # Configs and pickles (what a checkpoint would hold) name the variable, never the value.
    yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    assert "REFINEG_SECRET_KEY" in yaml and SECRET not in yaml
    assert SECRET.encode() not in pickle.dumps(llm)
    assert SECRET not in repr(llm)
    clone = pickle.loads(pickle.dumps(llm))  # rebuilt from the config, reading the key from the env again
    assert clone.chat([user("ok")]).cached


def test_missing_key_variable_sends_a_placeholder(chat_server, monkeypatch):
    monkeypatch.delenv("REFINEG_UNSET_KEY", raising=False)
    llm = create_llm_backend("openai", model="m", base_url=chat_server.base_url, api_key_env="REFINEG_UNSET_KEY")
    assert llm.chat([user("hi")]).ok
