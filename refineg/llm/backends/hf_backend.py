"""``hf`` backend: a local transformers model, text-only (causal LM, GGUF too) or image-text-to-text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from ..base import ChatBackend, Completion, Conversation
from ..config import LLMConfig
from ..factory import register_backend
from ..faults import BackendError
from ..images import prepare_image
from ..messages import ImagePart

log = logging.getLogger(__name__)

# Keys the wrapper passes that are not ``generate`` arguments under the same name. The structured-output keys are
# for servers: a local model's answer is validated against the schema but its decoding is not constrained.
_HANDLED = frozenset({"temperature", "max_tokens", "top_p", "seed", "response_format", "guided_json"})


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return "auto"
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown torch dtype {dtype!r}") from None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return value


@register_backend("hf")
class HFBackend(ChatBackend):
    """Runs ``config.model`` (a local folder or a hub id available offline) with transformers.

    Image-text-to-text checkpoints (Qwen2-VL, Qwen2.5-VL, LLaVA, ... any config that
    ``AutoModelForImageTextToText`` knows) load with their processor; everything else loads as a causal LM with
    its tokenizer, from a GGUF file when ``config.gguf_file`` is set. Prompts are rendered with the checkpoint's
    chat template; ``chat_many`` generates ``config.batch_size`` conversations at a time with left padding.
    Images are shrunk to ``config.max_side`` first (the processor may resize further to its own grid).
    """

    name = "hf"
    batched = True

    def __init__(self, config: LLMConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if not config.model:
            raise ValueError("the hf backend needs config.model (a model folder or hub id)")
        self.device = _resolve_device(config.device)
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        c = self.config
        common: dict[str, Any] = {"trust_remote_code": c.trust_remote_code}
        dtype = _resolve_dtype(c.dtype)
        self.multimodal = False
        if not c.gguf_file:
            model_config = AutoConfig.from_pretrained(c.model, **common)
            mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
            self.multimodal = type(model_config) in mapping
        if self.multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(c.model, **common)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(c.model, dtype=dtype, **common)
        else:
            gguf = {"gguf_file": c.gguf_file} if c.gguf_file else {}
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(c.model, **gguf, **common)
            self.model = AutoModelForCausalLM.from_pretrained(c.model, dtype=dtype, **gguf, **common)
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        template_owner = self.processor if self.processor is not None else self.tokenizer
        if not getattr(template_owner, "chat_template", None):
            raise ValueError(f"model {c.model!r} has no chat template; the hf backend needs one")
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        log.info("hf backend: %s on %s (%s)", c.model, self.device, "image-text-to-text" if self.multimodal else "text")

    def _render(self, messages: Conversation) -> tuple[str, list[Any]]:
        """Prompt text of one conversation, and its images in order."""
        images: list[Any] = []
        conversation: list[dict[str, Any]] = []
        for m in messages:
            if not self.multimodal:
                if m.images:
                    raise BackendError("bad_request", f"text-only model {self.config.model!r} got an image")
                conversation.append({"role": m.role, "content": m.text})
                continue

            def image_part(p: ImagePart) -> dict[str, Any]:
                images.append(prepare_image(p.image, self.config.max_side).image)
                return {"type": "image"}

            conversation.append({"role": m.role, "content": m.content_parts(image_part)})
        owner = self.processor if self.multimodal else self.tokenizer
        text = owner.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return text, images

    def _generate_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        temperature = float(params.get("temperature") or 0.0)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(params["max_tokens"]),
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
            if params.get("top_p") is not None:
                kwargs["top_p"] = float(params["top_p"])
        else:  # greedy: neutralise sampling defaults a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update({k: v for k, v in params.items() if k not in _HANDLED})
        return kwargs

    def _complete(self, messages: Conversation, params: dict[str, Any]) -> Completion:
        out = self._complete_batch([messages], params)[0]
        if isinstance(out, BackendError):
            raise out
        return out

    def _complete_batch(self, batch: Sequence[Conversation], params: dict[str, Any]) -> list[Completion | BackendError]:
        rendered: list[tuple[int, str, list[Any]]] = []
        out: list[Completion | BackendError | None] = [None] * len(batch)
        for i, messages in enumerate(batch):
            try:
                text, images = self._render(messages)
            except BackendError as err:
                out[i] = err
                continue
            rendered.append((i, text, images))
        if rendered:
            # One generation at a time: the model and the (Rust) tokenizer are not safe to share between threads.
            with self._lock:
                completions = self._generate(
                    [t for _, t, _ in rendered], [im for _, _, ims in rendered for im in ims], params
                )
            for (i, _, _), completion in zip(rendered, completions, strict=True):
                out[i] = completion
        return [o for o in out if o is not None]

    def _generate(self, texts: list[str], images: list[Any], params: dict[str, Any]) -> list[Completion]:
        """Generates answers for rendered prompts (``images`` in prompt order, flattened over the batch)."""
        import torch

        # The chat template already wrote the special tokens (BOS included where the model wants one).
        if self.multimodal:
            enc = self.processor(
                text=texts, images=images or None, padding=True, return_tensors="pt", add_special_tokens=False
            )
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        enc = enc.to(self.device)
        with torch.inference_mode():
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            generated = self.model.generate(**enc, **self._generate_kwargs(params))
        prompt_len = enc["input_ids"].shape[1]
        new_tokens = generated[:, prompt_len:].tolist()
        prompt_counts = enc["attention_mask"].sum(dim=1).tolist()
        completions = []
        for tokens, prompt_count in zip(new_tokens, prompt_counts, strict=True):
            stop = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
            completions.append(
                Completion(
                    text=self.tokenizer.decode(tokens if stop is None else tokens[:stop], skip_special_tokens=True),
                    prompt_tokens=int(prompt_count),
                    completion_tokens=len(tokens) if stop is None else stop + 1,
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return completions
