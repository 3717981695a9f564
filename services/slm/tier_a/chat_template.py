"""Render chat messages to a prompt with the model's own Jinja chat template.

Templates come from the GGUF (``tokenizer.chat_template``) and are untrusted input: they
run in Jinja's immutable sandbox, as in Hugging Face transformers and llama-cpp-python.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slm.errors import ModelError
from slm.tier_a.errors import InputRejected

# Used when a model carries no template (llama.cpp's server does the same).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A compiled chat template plus the special-token texts it refers to."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        self.source = source or CHATML_TEMPLATE
        self.is_fallback = source is None
        # The same environment as Hugging Face transformers renders templates in.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise ModelError(f"the model's chat template does not compile: {exc}") from None
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for ``messages``, ending with the assistant's turn opened."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            # Templates reject e.g. a wrong role order with raise_exception(...).
            raise InputRejected(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from None
