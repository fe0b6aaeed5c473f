"""The typed options of the model algorithms, from ``[worker] options`` in the configuration.

Each algorithm validates its options once, in its constructor: unknown keys
and wrong types stop the worker at start-up with a message naming them.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CACHE_DIR = "~/.cache/llmapi"


class InvalidOptions(ValueError):
    """The ``[worker] options`` do not fit the algorithm."""


class ModelOptions(BaseModel):
    """Where a model comes from and where it runs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str | None = Field(
        None,
        description="A local model directory or a hub name; none means the first "
        "`--model` name, else the algorithm's offline demo model.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a hub model.")
    offline: bool = Field(False, description="Never reach the hub: load hub names from the local cache only.")
    device: str = Field(
        "auto", description="`auto` (the pinned GPU if CUDA is usable, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; `auto` is bfloat16 (or float16) on a GPU, float32 on CPU."
    )
    cache_dir: str = Field(DEFAULT_CACHE_DIR, description="Where converted models (the demo model) are kept.")
    trust_remote_code: bool = Field(False, description="Allow a hub model to run its own Python code.")
    cpu_threads: int | None = Field(
        None, gt=0, description="torch intra-op threads of this worker process; none keeps torch's default."
    )


class GenerationOptions(ModelOptions):
    """Options of the text-generation algorithm: the model, request bounds and defaults."""

    default_max_new_tokens: int = Field(256, gt=0, description="New tokens generated when a request names none.")
    max_new_tokens_limit: int = Field(1024, gt=0, description="Most new tokens a request may ask for.")
    default_temperature: float = Field(0.0, ge=0, description="Temperature when a request names none; 0 is greedy.")
    max_temperature: float = Field(2.0, ge=0, description="Highest temperature a request may ask for.")
    default_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass when a request names none.")
    max_stop_strings: int = Field(4, ge=0, description="Most stop strings a request may give.")
    max_stop_chars: int = Field(64, gt=0, description="Longest stop string, in characters.")
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="Longest prompt in tokens; none means the model's context length."
    )
    text_as_chat: bool = Field(
        True, description="Treat a request's `text` as one user message when the tokenizer has a chat template."
    )
    warmup_tokens: int = Field(4, ge=0, description="Tokens generated once at start-up, before READY; 0 skips it.")
    max_batch: int = Field(
        64, gt=0, le=1024, description="Most requests decoded together at once (the worker's capacity)."
    )
    max_batch_tokens: int = Field(
        65536,
        gt=0,
        description="Memory bound of the batch: the prompts plus token budgets of the requests decoded at "
        "once; a request that would pass it waits for room. The compiled path's fixed cache holds this many "
        "tokens, shared evenly between max_batch rows.",
    )
    prefill_chunk: int = Field(
        512,
        gt=0,
        description="Most prompt tokens computed per step: a longer prompt is computed in chunks, between "
        "the decoding steps of the requests already running, and short prompts are computed together.",
    )
    continuous: bool = Field(
        True,
        description="Seat arriving requests between two decoding steps; false seats them only when every "
        "running request has ended (batching per dispatch, the behaviour before, kept for comparison).",
    )
    prefix_cache_tokens: int = Field(
        4096,
        ge=0,
        description="Tokens of prompts' leading blocks kept for later prompts that start the same way "
        "(each costs its keys and values: 2 x layers x kv heads x head size x the dtype's bytes); "
        "0 turns the prefix cache off.",
    )
    prefix_cache_shared: bool = Field(
        False,
        description="Share cached prefixes between API keys (a trusted deployment); by default each key "
        "reuses only its own, so no key can time another's prompts.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Decode with a static cache and a compiled forward (CUDA graphs on a GPU), compiled "
        "during the warm-up; `auto` is on for CUDA devices, off elsewhere.",
    )

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> GenerationOptions:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens_limit")
        if self.default_temperature > self.max_temperature:
            raise ValueError("default_temperature must not exceed max_temperature")
        return self


class EmbeddingOptions(ModelOptions):
    """Options of the embedding algorithm: the encoder model and request bounds."""

    max_inputs: int = Field(256, gt=0, description="Most texts one request may embed.")
    max_input_tokens: int | None = Field(
        None, gt=0, description="Longest text in tokens; none means the model's own limit."
    )
    truncate: bool = Field(False, description="Cut texts over the limit instead of refusing the request.")
    batch_size: int = Field(32, gt=0, description="Texts encoded in one forward pass.")
    max_batch: int = Field(
        32, gt=0, le=1024, description="Most requests encoded together in one dispatch (the worker's capacity)."
    )
    warmup: bool = Field(True, description="Encode one text at start-up, before READY.")


OptionsT = TypeVar("OptionsT", bound=ModelOptions)


def parse_options(kind: type[OptionsT], options: dict[str, Any]) -> OptionsT:
    """``options`` validated as ``kind``; raises :class:`InvalidOptions` naming every problem."""
    try:
        return kind.model_validate(options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "options"
            message = "unknown option" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{where}: {message}")
        raise InvalidOptions(f"invalid {kind.__name__}: " + "; ".join(problems)) from None
