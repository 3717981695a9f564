"""The official `openai` Python client works against the Doorman."""

import openai
import pytest
from support.server import EOG_BIAS, TINY_ID


@pytest.fixture
def oai(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base + "/v1", api_key="unused", max_retries=0)


def test_models(oai):
    assert [m.id for m in oai.models.list()] == [TINY_ID]


def test_chat_non_stream_and_stream_agree(oai):
    kw = dict(model=TINY_ID, messages=[{"role": "user", "content": "hello"}], max_tokens=12,
              temperature=0, logit_bias=EOG_BIAS)
    whole = oai.chat.completions.create(**kw)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12
    parts, finish = [], None
    for chunk in oai.chat.completions.create(**kw, stream=True,
                                             stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        else:
            assert chunk.usage.completion_tokens == 12
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == "length"


def test_completions(oai):
    out = oai.completions.create(model=TINY_ID, prompt="the sun", max_tokens=5, temperature=0,
                                 logit_bias=EOG_BIAS)
    assert out.usage.completion_tokens == 5
    assert isinstance(out.choices[0].text, str)


def test_errors_surface_as_client_exceptions(oai):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": "x"}],
                                    temperature=5)
    assert err.value.body["param"] == "temperature"
