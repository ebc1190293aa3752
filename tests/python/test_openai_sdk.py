"""The official `openai` SDK against a real `inferd serve` on a free port, with the
real default model. Started once per session; the binary comes from
$INFERD_BIN (default target/debug/inferd)."""

import json
import os
import queue
import re
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("INFERD_BIN", os.path.join(ROOT, "target", "debug", "inferd"))
API_KEY = "test-key"


def start_server(*extra):
    """Starts `inferd serve --port 0` and returns (process, base URL) once its
    "ready" log line names the port; fails (never hangs) after 60 s."""
    proc = subprocess.Popen(
        [BIN, "serve", "--port", "0", "--api-key", API_KEY, *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines = queue.Queue()

    def drain():
        # Keeps reading so the server never blocks on a full pipe.
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError(f"inferd serve exited with {proc.wait()}")
        m = re.search(r"ready: (http://[0-9.:]+)/v1", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("inferd serve did not become ready in 60 s")


@pytest.fixture(scope="module")
def server():
    # The default chat model first (requests naming no model go there), the
    # embedding model beside it in the same process.
    proc, base = start_server("--model", "smollm2-135m", "--model", "minilm-l6")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)


def ask(client, **kw):
    args = dict(model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0, max_tokens=24)
    args.update(kw)
    return client.chat.completions.create(**args)


def metrics(base):
    return urllib.request.urlopen(base + "/metrics").read().decode()


def metric_value(text, name):
    """The value of one sample; a missing sample fails the test (never reads as 0)."""
    m = re.search(r"^" + re.escape(name) + r" ([0-9.e+]+)$", text, re.M)
    assert m, f"no sample {name} in /metrics"
    return float(m.group(1))


def wait_for_metric(base, name, value, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric_value(metrics(base), name) == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}")


def test_chat_streaming_and_non_streaming_agree(client):
    full = ask(client)
    text = full.choices[0].message.content
    assert "Paris" in text
    assert full.choices[0].finish_reason == "stop"
    assert full.usage.prompt_tokens > 0 and full.usage.completion_tokens > 0
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"


def test_stop_n_logprobs(client):
    r = ask(client, stop=[" Paris"])
    assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    r = ask(client, n=2, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1]
    r = ask(client, logprobs=True, top_logprobs=2, max_tokens=3)
    lp = r.choices[0].logprobs.content
    assert lp and len(lp[0].top_logprobs) == 2 and lp[0].logprob <= 0


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tool_deltas(stream):
    """The tool-call deltas of a streamed chat completion, and its finish reason."""
    deltas, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    return deltas, finish


def weather_call(city, call_id):
    return {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}


def test_tools_round_trip(client):
    # SmolLM2's template ignores `tools`, so the server describes them Hermes-style;
    # two earlier calls in the conversation show this 135M model the format.
    messages = [
        {"role": "user", "content": "Weather in London?"}, weather_call("London", "call_a"),
        {"role": "user", "content": "Weather in Berlin?"}, weather_call("Berlin", "call_b"),
        {"role": "user", "content": "Weather in Paris?"},
    ]
    r = ask(client, tools=WEATHER, messages=messages, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # Streamed, the call arrives as a tool-call delta with the same content.
    stream = ask(client, tools=WEATHER, messages=messages, max_tokens=40, stream=True)
    deltas, finish = tool_deltas(stream)
    assert finish == "tool_calls"
    assert deltas[0].function.name == "get_weather" and json.loads(deltas[0].function.arguments) == {"city": "Paris"}

    # The call and its result go back in; the model answers in text.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    r = ask(client, tools=WEATHER, messages=messages, max_tokens=40)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    # tool_choice "none": the tools are described but no call is parsed out.
    r = ask(client, tools=WEATHER, messages=messages[:-2], max_tokens=40, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"


def test_completions(client):
    r = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=4, temperature=0)
    assert "Paris" in r.choices[0].text
    r = client.completions.create(model="smollm2-135m", prompt=[504, 3575, 282, 4649, 314], max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == 5


def test_completions_echo_and_logprobs(client):
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=3, temperature=0,
                                  echo=True, logprobs=2)
    text, lp = r.choices[0].text, r.choices[0].logprobs
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert len(lp.tokens) == r.usage.prompt_tokens + 3 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2-135m", prompt=prompt, suffix="!", max_tokens=3)
    assert e.value.body["param"] == "suffix"


def test_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, top_p=1.5)
    assert e.value.body["param"] == "top_p"
    with pytest.raises(openai.NotFoundError):
        ask(client, model="gpt-404")
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(bad)


def test_cancelled_stream_frees_its_blocks(server, client):
    stream = ask(client, stream=True, max_tokens=2000, messages=[{"role": "user", "content": "Write a very long story."}])
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        if metric_value(metrics(server), 'inferd_kv_blocks{model="smollm2-135m",state="used"}') == 0:
            break
        time.sleep(0.1)
    assert metric_value(metrics(server), 'inferd_kv_blocks{model="smollm2-135m",state="used"}') == 0


def test_a_full_queue_gets_429_and_metrics_move():
    proc, base = start_server("--max-running", "1", "--max-waiting", "1")
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
        results = []

        def one(**kw):
            results.append(ask(client, **kw).choices[0].finish_reason)

        # One request running, one waiting behind it: the queue is full, so the
        # next one is refused at once — deterministically, not by a race.
        running = threading.Thread(target=one, kwargs=dict(max_tokens=300, extra_body={"ignore_eos": True}))
        running.start()
        wait_for_metric(base, 'inferd_engine_running_requests{model="smollm2-135m"}', 1)
        waiting = threading.Thread(target=one, kwargs=dict(max_tokens=2))
        waiting.start()
        wait_for_metric(base, 'inferd_engine_waiting_requests{model="smollm2-135m"}', 1)
        with pytest.raises(openai.RateLimitError) as e:
            ask(client)
        assert e.value.response.headers["retry-after"] == "1"
        running.join()
        waiting.join()
        assert results == ["length", "length"], results
        after = metrics(base)
        assert metric_value(after, 'inferd_request_errors_total{model="smollm2-135m",type="overloaded"}') == 1
        name = 'inferd_output_tokens_total{model="smollm2-135m"}'
        assert metric_value(after, name) == 302
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sigterm_lets_in_flight_requests_finish():
    proc, base = start_server()
    client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=ask(client, max_tokens=64)))
    t.start()
    deadline = time.time() + 20
    while metric_value(metrics(base), 'inferd_engine_running_requests{model="smollm2-135m"}') < 1 and time.time() < deadline:
        time.sleep(0.02)
    proc.terminate()
    t.join(timeout=60)
    assert result["r"].choices[0].message.content, "the in-flight request completed"
    assert proc.wait(timeout=30) == 0


def test_embeddings_float_and_base64(client):
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly revenue grew by 4%."]
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    r = client.embeddings.create(model="minilm-l6", input=texts)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == "minilm-l6"
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs), "L2-normalised"
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]) + 0.2, "similar sentences are closer"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    f = client.embeddings.create(model="minilm-l6", input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(f.data[0].embedding, vecs[0])) < 1e-6, "float and base64 agree"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm-l6", input="x", dimensions=128)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm-l6", input="word " * 600)
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="smollm2-135m", input="x")


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def test_json_mode_and_json_schema(client):
    import jsonschema

    r = ask(client, messages=[{"role": "user", "content": "Describe a cat in JSON."}],
            response_format={"type": "json_object"}, max_tokens=300, frequency_penalty=1.0)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        r = ask(client, messages=[{"role": "user", "content": "Invent a person."}],
                response_format=fmt, max_tokens=120, temperature=0.8, seed=seed)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    # Streamed, the pieces join into the same kind of document.
    stream = ask(client, messages=[{"role": "user", "content": "Invent a person."}],
                 response_format=fmt, max_tokens=120, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    # The SDK's own structured-output helper parses into a pydantic model.
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    # Greedy: sampled at the default temperature of 1, the model can wander inside
    # a string until max_tokens, which the SDK rejects as a length finish.
    parsed = client.chat.completions.parse(model="smollm2-135m", response_format=City, max_tokens=60,
                                           temperature=0,
                                           messages=[{"role": "user", "content": "Name a city."}])
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_guided_extensions(client):
    r = ask(client, extra_body={"guided_choice": ["positive", "negative"]},
            messages=[{"role": "user", "content": "Sentiment of: I love it!"}])
    assert r.choices[0].message.content in ("positive", "negative")
    r = client.completions.create(model="smollm2-135m", prompt="Call me at", max_tokens=20,
                                  extra_body={"guided_regex": r" [0-9]{3}-[0-9]{4}"})
    assert re.fullmatch(r" [0-9]{3}-[0-9]{4}", r.choices[0].text), r.choices[0].text
    r = client.completions.create(model="smollm2-135m", prompt="Is water wet? Answer:", max_tokens=8,
                                  extra_body={"grammar": 'root ::= " " ("yes" | "no")'})
    assert r.choices[0].text in (" yes", " no")
    # Something the compiler refuses is a 400 that names the field and says why.
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert e.value.body["param"] == "response_format" and "uniqueItems" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, extra_body={"guided_grammar": "start: missing_rule"})
    assert e.value.body["param"] == "guided_grammar"
    # Cut short by max_tokens: `length`, never a silently invalid `stop`.
    story = {"type": "object", "properties": {"story": {"type": "string", "minLength": 200}}, "required": ["story"]}
    r = ask(client, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": story}}, max_tokens=6)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.startswith('{"story": "')


WEATHER_PARAMS = WEATHER[0]["function"]["parameters"]
TWO_TOOLS = WEATHER + [{"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}]


def test_forced_tool_calls(client):
    import jsonschema

    question = [{"role": "user", "content": "What is the weather like in Rome today?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = ask(client, messages=question, tools=TWO_TOOLS, tool_choice=named, max_tokens=60, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)

    r = ask(client, messages=question, tools=TWO_TOOLS, tool_choice="required", max_tokens=80,
            parallel_tool_calls=False)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")

    # Streamed as OpenAI streams calls: id, type and name first, then argument fragments.
    stream = ask(client, messages=question, tools=TWO_TOOLS, tool_choice=named, max_tokens=60, stream=True,
                 parallel_tool_calls=False)
    deltas, finish = tool_deltas(stream)
    assert finish == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    assert rest and all(d.id is None and d.function.name is None and d.index == 0 for d in rest)
    args = "".join(d.function.arguments for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER_PARAMS)

    # parallel_tool_calls (the default): one or more calls, each valid for its tool.
    r = ask(client, tools=TWO_TOOLS, tool_choice="required", max_tokens=160,
            messages=[{"role": "user", "content": "Weather in Rome and in Oslo?"}])
    calls = r.choices[0].message.tool_calls
    assert calls and len({c.id for c in calls}) == len(calls)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TWO_TOOLS}
    for c in calls:
        jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])


def start_front(config):
    """A second `inferd serve` on `config`, which names this suite's server as an
    upstream whose key is in INFERD_TEST_UPSTREAM_KEY."""
    os.environ["INFERD_TEST_UPSTREAM_KEY"] = API_KEY
    try:
        return start_server("--config", str(config))
    finally:
        del os.environ["INFERD_TEST_UPSTREAM_KEY"]


def test_an_upstream_through_a_front_server(server, tmp_path):
    """`[[upstreams]]`: a second `inferd serve` answers for this one under another
    name; the SDK sees the same answers, streamed chunk by chunk, and forced
    tool calls travel through."""
    config = tmp_path / "front.toml"
    config.write_text(
        "[[upstreams]]\n"
        'name = "remote"\n'
        f'base_url = "{server}/v1"\n'
        'model = "smollm2-135m"\n'
        'api_key_env = "INFERD_TEST_UPSTREAM_KEY"\n'
    )
    proc, front = start_front(config)
    try:
        direct = openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
        via = openai.OpenAI(base_url=front + "/v1", api_key=API_KEY, max_retries=0)
        want = ask(direct)
        got = ask(via, model="remote")
        assert got.model == "remote"
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.completion_tokens == want.usage.completion_tokens
        stream = ask(via, model="remote", stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == want.choices[0].message.content
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
        assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
        call = via.chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=WEATHER, tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0, max_tokens=60)
        fn = call.choices[0].message.tool_calls[0].function
        assert fn.name == "get_weather" and "city" in json.loads(fn.arguments)
        assert call.choices[0].finish_reason == "tool_calls"
        with pytest.raises(openai.NotFoundError):
            ask(via, model="smollm2-135m")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_sdk_through_a_gateway_with_tiers(server, tmp_path):
    """`model="auto"` over a local tier and an upstream tier, with every stage
    before the model on (rules, exact and semantic caches, intents, tool
    narrowing, context budgets): the SDK reads the routed answer and the
    routed stream (whose first chunk, the route, has no choices) unchanged."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[[models]]\n"
        'name = "local"\n'
        'model = "smollm2-135m"\n'
        "[[models]]\n"
        'name = "minilm"\n'
        'model = "minilm-l6"\n'
        "[[upstreams]]\n"
        'name = "remote"\n'
        f'base_url = "{server}/v1"\n'
        'model = "smollm2-135m"\n'
        'api_key_env = "INFERD_TEST_UPSTREAM_KEY"\n'
        "price_in_per_mtok = 1.0\n"
        "[[tiers]]\n"
        'name = "on-box"\n'
        'backends = ["local"]\n'
        "[[tiers]]\n"
        'name = "big"\n'
        'backends = ["remote"]\n'
        "[[tiers]]\n"
        'name = "narrow"\n'
        'backends = ["local"]\n'
        "context_window = 300\n"
        "[[rules]]\n"
        'name = "math"\n'
        "regex = '(?i)^what is (?P<input>[-+*/^()%.\\d\\s]+(?:of [\\d.\\s]+)?)\\?$'\n"
        'builtin = "arithmetic"\n'
        "[routing.cache]\n"
        "ttl_secs = 60\n"
        'semantic_model = "minilm"\n'
        "[routing.tools]\n"
        'model = "minilm"\n'
        "top_k = 2\n"
        "min_tools = 2\n"
        "[routing.intents]\n"
        'model = "minilm"\n'
        "threshold = 0.4\n"
        "[[routing.intents.intent]]\n"
        'name = "weather"\n'
        'description = "Questions about the weather, rain or temperature"\n'
        'examples = ["Will it rain in Berlin tomorrow?", "How hot is it in Madrid?"]\n'
        'tools = ["get_weather"]\n'
        "[routing.context]\n"
        "output_reserve = 32\n"
    )
    proc, front = start_front(config)
    try:
        via = openai.OpenAI(base_url=front + "/v1", api_key=API_KEY, max_retries=0)
        raw = via.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=24)
        assert raw.headers["x-inferd-route"].startswith("tier=on-box; backend=local; reason=cost")
        got = raw.parse()
        assert got.model == "auto" and "Paris" in got.choices[0].message.content
        assert got.model_extra["route"]["tier"] == "on-box"
        chunks = list(ask(via, model="auto", stream=True))
        assert chunks[0].choices == [] and chunks[0].model_extra["route"]["backend"] == "local"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == got.choices[0].message.content[:len(text)] and text
        big = ask(via, model="big")
        # A rule answers without a model, whole and streamed; a repeat comes from the cache.
        ruled = ask(via, model="auto", messages=[{"role": "user", "content": "What is 17% of 240?"}])
        assert ruled.choices[0].message.content == "40.8"
        assert ruled.model_extra["route"]["handler"]["action"] == "answered"
        parts = list(ask(via, model="auto", messages=[{"role": "user", "content": "What is 2^10?"}],
                         stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == "1024"
        again = ask(via, model="auto")
        assert again.model_extra["route"]["cache"] == "exact"
        assert again.choices[0].message.content == got.choices[0].message.content
        route = big.model_extra["route"]
        assert (route["tier"], route["backend"], route["reason"]) == ("big", "remote", "explicit")
        assert route["overhead_ms"] >= 0 and "attempts" not in route
        assert float(raw.headers["x-inferd-overhead-ms"]) >= 0
        # The semantic cache: a reworded question, sampled, answered from the first.
        first = ask(via, model="auto", temperature=0.8,
                    messages=[{"role": "user", "content": "Name the capital city of Italy."}])
        near = ask(via, model="auto", temperature=0.8,
                   messages=[{"role": "user", "content": "name the capital city of Italy"}])
        assert near.model_extra["route"]["cache"] == "semantic"
        assert near.choices[0].message.content == first.choices[0].message.content
        # The intent layer keeps the weather intent's tool of four.
        tools = WEATHER + [{"type": "function", "function": {"name": n, "description": d,
                                                              "parameters": {"type": "object", "properties": {}}}}
                           for n, d in [("send_email", "Send an email"), ("play_music", "Play a song"),
                                        ("set_alarm", "Set an alarm clock")]]
        called = ask(via, model="auto", tools=tools, max_tokens=40,
                     messages=[{"role": "user", "content": "What's the weather like in Paris today?"}])
        route = called.model_extra["route"]
        assert route["intent"]["name"] == "weather" and route["intent"]["action"] == "labelled"
        assert route["tools"]["kept"] == ["get_weather"]
        assert called.choices[0].finish_reason in ("stop", "length", "tool_calls")
        # Context budgets: a long conversation fits the narrow tier, whole and streamed.
        history = []
        for i in range(30):
            history += [{"role": "user", "content": f"Turn {i}: remember {i}."},
                        {"role": "assistant", "content": f"Noted {i}."}]
        history.append({"role": "user", "content": "Which turn came first?"})
        fitted = ask(via, model="narrow", messages=history, max_tokens=8)
        context = fitted.model_extra["route"]["context"]
        assert context["turns_dropped"] > 0 and context["prompt_after"] <= 300 - 8
        assert fitted.usage.prompt_tokens == context["prompt_after"]
        streamed = list(ask(via, model="narrow", messages=history, max_tokens=8, stream=True))
        assert streamed[0].model_extra["route"]["context"]["prompt_after"] == context["prompt_after"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
