"""The client libraries teams put in front of an OpenAI-compatible server, against a live stack:
langchain-openai (Chat Completions and the Responses API, tools, structured output, embeddings),
litellm, and the OpenAI Agents SDK's default Agent, which must call its tool and answer."""

from __future__ import annotations

import asyncio

import pydantic
import pytest

from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama
from tests.frontend.conftest import running_api

pytest.importorskip("transformers")


class Sum(pydantic.BaseModel):
    a: int = pydantic.Field(ge=0, le=9)
    b: int = pydantic.Field(ge=0, le=9)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    # A model whose answers end by themselves: agents take an answer cut by its budget for a failure.
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"), ends_answers=True)
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    workers = (
        ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
         "--option", "max_new_tokens_limit=400"),
        ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1"),
    )
    with running_api(tmp_path_factory.mktemp("clients"), workers=workers, frontend={"request_timeout": 60.0}) as api:
        yield api


def chat_model(api, **options):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="tiny", base_url=api.url + "/v1", api_key=api.key(), max_retries=0, timeout=60,
                      max_tokens=200, **options)


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
def test_langchain_tools_round_trip_and_structured_output(api, responses_api):
    from langchain_core.messages import HumanMessage, ToolMessage

    model = chat_model(api, use_responses_api=responses_api, temperature=0)
    bound = model.bind_tools([Sum], tool_choice="Sum")
    asked = HumanMessage("Add two numbers.")
    call = bound.invoke([asked])
    (tool_call,) = call.tool_calls
    assert tool_call["name"] == "Sum" and Sum(**tool_call["args"])
    answer = model.bind_tools([Sum]).invoke([asked, call, ToolMessage("7", tool_call_id=tool_call["id"])])
    assert answer.content or answer.tool_calls
    assert isinstance(model.with_structured_output(Sum).invoke("Two digits, please."), Sum)


def test_langchain_embeddings(api):
    from langchain_openai import OpenAIEmbeddings

    # Its default counts tokens with OpenAI's tokenizer and sends their ids, which another model
    # would read as its own (docs/openai.md): sent as text, the vectors are this model's.
    embeddings = OpenAIEmbeddings(model="embed", base_url=api.url + "/v1", api_key=api.key(),
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["Paris", "Rome"])
    assert len(vectors) == 2 and len(vectors[0]) == len(embeddings.embed_query("Berlin")) > 0


def test_litellm_whole_and_streamed(api, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
    import litellm

    arguments = {"model": "openai/tiny", "api_base": api.url + "/v1", "api_key": api.key(),
                 "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    whole = litellm.completion(**arguments)
    pieces = list(litellm.completion(**arguments, stream=True))
    assert whole.usage.completion_tokens <= 5
    streamed = "".join(piece.choices[0].delta.content or "" for piece in pieces)
    assert streamed == whole.choices[0].message.content


def test_the_agents_sdks_default_agent_calls_its_tool_and_answers(api, monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")  # its traces would go to OpenAI
    from agents import Agent, ModelSettings, OpenAIProvider, RunConfig, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.append((a, b))
        return a + b

    client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key(), max_retries=0, timeout=60)
    # The Responses API is the SDK's default model path; its first turn must call the tool.
    provider = OpenAIProvider(openai_client=client, use_responses=True)
    agent = Agent(name="adder", instructions="Add numbers.", tools=[add], model="tiny",
                  model_settings=ModelSettings(tool_choice="required", max_tokens=200))
    result = asyncio.run(Runner.run(agent, "Add 2 and 3.", run_config=RunConfig(model_provider=provider),
                                    max_turns=4))
    assert len(calls) >= 1 and isinstance(result.final_output, str)
