"""LangChain (`langchain-openai`, pinned in requirements.txt) against a real
`inferd serve` with the default chat model and the MiniLM embedding model:
`invoke`, `stream`, `bind_tools` with a forced `tool_choice`,
`with_structured_output` on a pydantic model, and `OpenAIEmbeddings`."""

import pytest
from pydantic import BaseModel, Field
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from test_openai_sdk import API_KEY, start_server


@pytest.fixture(scope="module")
def base():
    proc, base = start_server("--model", "smollm2-135m", "--model", "minilm-l6")
    yield base + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_invoke_and_stream(base):
    llm = ChatOpenAI(base_url=base, api_key=API_KEY, model="smollm2-135m", temperature=0, max_tokens=24, max_retries=0)
    r = llm.invoke("What is the capital of France?")
    assert "Paris" in r.content
    assert r.response_metadata["finish_reason"] == "stop"
    assert r.usage_metadata["input_tokens"] > 0 and r.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))
    assert streamed == r.content


def test_openai_embeddings(base):
    # check_embedding_ctx_length=False: LangChain would otherwise count tokens with
    # tiktoken's OpenAI encodings, which it downloads and which are not this model's.
    emb = OpenAIEmbeddings(base_url=base, api_key=API_KEY, model="minilm-l6",
                           check_embedding_ctx_length=False, max_retries=0)
    docs = emb.embed_documents(["A cat sits on the mat.", "Quarterly revenue grew by 4%."])
    query = emb.embed_query("A kitten rests on a rug.")
    assert [len(v) for v in docs] == [384, 384] and len(query) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert dot(query, docs[0]) > dot(query, docs[1]) + 0.2


class Weather(BaseModel):
    """Current weather in a city."""
    city: str = Field(description="The city name")
    unit: str = Field(description="celsius or fahrenheit", pattern="^(celsius|fahrenheit)$")


def test_bind_tools_with_forced_tool_choice(base):
    llm = ChatOpenAI(base_url=base, api_key=API_KEY, model="smollm2-135m", temperature=0, max_tokens=60, max_retries=0)
    forced = llm.bind_tools([Weather], tool_choice="Weather")
    r = forced.invoke("How warm is it in Madrid?")
    (call,) = r.tool_calls
    assert call["name"] == "Weather"
    Weather(**call["args"])
    # "any" is LangChain's word for OpenAI's "required".
    r = llm.bind_tools([Weather], tool_choice="any").invoke("How warm is it in Madrid?")
    assert r.tool_calls and r.tool_calls[0]["name"] == "Weather"
    # Streamed: the chunks add up to the same kind of call.
    chunks = list(forced.stream("How warm is it in Madrid?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.tool_calls[0]["name"] == "Weather"
    Weather(**total.tool_calls[0]["args"])


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(base, method):
    llm = ChatOpenAI(base_url=base, api_key=API_KEY, model="smollm2-135m", temperature=0, max_tokens=80, max_retries=0)
    out = llm.with_structured_output(Weather, method=method).invoke("Report the weather in Oslo.")
    assert isinstance(out, Weather)
    # JSON mode promises an object, not a schema: LangChain hands back the dict.
    out = llm.with_structured_output(None, method="json_mode").invoke("Report the weather in Oslo as JSON.")
    assert isinstance(out, dict)
