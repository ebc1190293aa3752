"""LangChain (`langchain-openai`, pinned in requirements.txt) against a real
`inferd serve` with the default chat model and the MiniLM embedding model:
`invoke`, `stream`, and `OpenAIEmbeddings`. (Forced tool choice and
`with_structured_output` need constrained decoding, which is not built yet.)"""

import pytest
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
