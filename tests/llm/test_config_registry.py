import pytest
from omegaconf import OmegaConf

from refineg.llm import LLM_BACKENDS, LLMConfig, RetryPolicy, create_llm_backend, list_llm_backends
from refineg.llm.faults import parse_retry_after, redact
from refineg.llm.usage import Budget


def test_registry_lists_backends_and_rejects_unknown_names():
    assert list_llm_backends() == ["hf", "openai", "replay"]
    assert "openai" in LLM_BACKENDS
    with pytest.raises(KeyError, match="known llm backends: hf, openai, replay"):
        create_llm_backend("vllm", model="m")


def test_config_typos_are_errors():
    with pytest.raises(TypeError, match="unknown LLM config key.*temprature"):
        create_llm_backend("openai", model="m", temprature=0.3)
    schema = OmegaConf.structured(LLMConfig)
    merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(["backend=hf", "max_calls=10", "extra.top_k=5"]))
    cfg = LLMConfig.from_options(merged)
    assert (cfg.backend, cfg.max_calls, cfg.extra) == ("hf", 10, {"top_k": 5})
    with pytest.raises(Exception, match="max_side"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["max_side=big"]))
    with pytest.raises(Exception, match="maxside"):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["maxside=3"]))


def test_backoff_is_exponential_bounded_and_jittered():
    import random

    policy = RetryPolicy(max_retries=5, backoff_base_s=1.0, backoff_max_s=8.0, jitter=0.5)
    rng = random.Random(0)
    delays = [[policy.delay(i, rng=rng) for i in range(6)] for _ in range(50)]
    for i, cap in enumerate([1, 2, 4, 8, 8, 8]):
        column = [d[i] for d in delays]
        assert all(cap / 2 <= d <= cap for d in column)
        assert len(set(column)) > 1  # jittered
    assert policy.delay(0, retry_after_s=5.0, rng=rng) >= 5.0
    assert policy.delay(0, retry_after_s=1e6, rng=rng) <= policy.max_retry_after_s


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_redact_and_budget():
    assert redact("key sk-abc123 and sk-abc123", ["sk-abc123"]) == "key *** and ***"
    budget = Budget(max_calls=2)
    assert budget.try_acquire_call() and budget.try_acquire_call() and not budget.try_acquire_call()
    assert budget.exhausted and budget.calls == 2
