"""Text generation and chat with a causal language model: the ``text-generation`` algorithm.

The model and tokenizer are loaded once, in the constructor; ``warm_up``
(run by the worker on its serving thread, before READY) compiles the
decoder where that is on and generates a few tokens, so that no request
pays for either. Requests and responses are described in
``docs/models.md``:

* ``handle`` answers ``{"output", "usage", "finish_reason"}``;
* ``stream`` yields ``{"text": ...}`` pieces and returns
  ``{"usage", "finish_reason"}``; the pieces join to the same ``output``;
* ``serve_batch`` answers up to ``max_batch`` requests of one dispatch,
  decoded together; each row gets its pieces and its answer as soon as it
  ends, while the others go on.

A row stops at the next token when its task is cancelled, its deadline
passes, or (streaming in-process) its consumer goes away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import structlog
from transformers import AutoModelForCausalLM

from broker.contract.grammar import json_schema_grammar
from broker.errors import InvalidInput
from gpuworker.algorithm import Batch, Row, TaskContext
from gpuworker.models.constraints import Constraint, Grammars
from gpuworker.models.decoding import Decoder
from gpuworker.models.demo import DEMO_NAME, demo_model_dir
from gpuworker.models.engine import Engine
from gpuworker.models.grammar import tool_call_grammar
from gpuworker.models.job import Job
from gpuworker.models.loading import ModelSource, ResidentModel, context_length, locate
from gpuworker.models.options import GenerationOptions, parse_options
from gpuworker.models.params import GenerationParams, Prompt, generation_params
from gpuworker.models.prefix_cache import PrefixCache
from gpuworker.models.prompting import render_prompt
from gpuworker.models.textstream import TextAssembler

log = structlog.get_logger(__name__)

GREEDY = GenerationParams(prompt=Prompt(text=""), max_new_tokens=None, temperature=0.0, top_p=1.0, stop=(), seed=None)


class TextGeneration(ResidentModel):
    """A causal language model and its tokenizer, resident on one device.

    ``logger`` is accepted for the Django LLM API server's calling
    convention and not used: this module logs through its own named
    logger. ``model_names``: the first names the model when the ``model``
    option does not (``llmapi worker --model DIR``); with neither, the
    offline demo model is used. ``options`` are the keys of
    :class:`~gpuworker.models.options.GenerationOptions`, from
    ``[worker] options``: where the model comes from, its device and dtype,
    batching and compilation, and the bounds and defaults of request
    parameters.
    """

    capabilities = ("chat", "completion", "text")

    def __init__(self, logger: Any = None, model_names: list[str] | None = None, **options: Any) -> None:
        self.options = parse_options(GenerationOptions, options)
        super().__init__(AutoModelForCausalLM, self._source(model_names or []), self.options)
        self.context_length = context_length(self.model.config, self.tokenizer)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = _pad_id(self.model, self.tokenizer, self.eos_ids)
        self.max_batch = self.options.max_batch
        compiled = self.options.compile == "on" or (self.options.compile == "auto" and self.device.type == "cuda")
        self.prefixes = (
            PrefixCache(self.options.prefix_cache_tokens, shared=self.options.prefix_cache_shared)
            if self.options.prefix_cache_tokens
            else None
        )
        self._build_engine(compiled)
        self._grammars: Grammars | None = None

    def _source(self, model_names: list[str]) -> ModelSource:
        if self.options.model:
            return locate(self.options.model)
        if model_names:
            return locate(model_names[0])
        return ModelSource(str(demo_model_dir(self.options.cache_dir)), DEMO_NAME, local=True)

    def _build_engine(self, compiled: bool) -> None:
        self.decoder = Decoder(
            self.model,
            self.device,
            self.pad_id if self.pad_id is not None else 0,
            compiled=compiled,
            max_batch=self.max_batch,
            context_length=self.context_length,
            max_cache_tokens=self.options.max_batch_tokens,
        )
        self.engine = Engine(
            self.decoder,
            self.max_batch,
            self.options.max_batch_tokens,
            self.options.prefill_chunk,
            self.prefixes,
            self.options.continuous,
        )

    def warm_up(self) -> None:
        """Compile the decoder (where on) and generate a few tokens, before the first request.

        A compilation that fails leaves the worker decoding eagerly, and says so.
        """
        if self.decoder.compiled:
            started = time.perf_counter()
            try:
                self.decoder.warm_up(GREEDY)
            except Exception as exc:  # compilers fail in many ways; eager decoding still serves
                log.warning("compiled_decoding_failed", error_type=type(exc).__name__, reason=str(exc)[:2000])
                self._build_engine(compiled=False)
            else:
                log.info("decoder_compiled", seconds=round(time.perf_counter() - started, 3))
        if self.options.warmup_tokens:
            started = time.perf_counter()
            tokens = min(self.options.warmup_tokens, self.options.max_new_tokens_limit)
            warm_up = {"prompt": "Hello", "max_new_tokens": tokens, "temperature": 0}
            self.handle(warm_up, TaskContext("warm-up", math.inf))
            seconds = round(time.perf_counter() - started, 3)
            log.info("model_warmed_up", model=self.source.name, tokens=tokens, seconds=seconds)
        self.decoder.clock.busy_seconds = 0.0  # the warm-up served no one

    def describe(self) -> dict[str, Any]:
        """Model, device, dtype, context, batching and size, for the broker's status service."""
        return {
            **self.describe_model(),
            "context_length": self.context_length,
            "max_new_tokens_limit": self.options.max_new_tokens_limit,
            "max_stop_strings": self.options.max_stop_strings,
            "max_stop_chars": self.options.max_stop_chars,
            "max_batch": self.max_batch,
            "max_batch_tokens": self.options.max_batch_tokens,
            "prefill_chunk": self.options.prefill_chunk,
            "prefix_cache_tokens": self.options.prefix_cache_tokens,
            "compiled": self.decoder.compiled,
        }

    # -- serving -------------------------------------------------------------

    def serve_batch(self, batch: Batch) -> None:
        """Answer every row of ``batch``, and the rows that arrive while it runs, each as soon
        as it ends: the engine takes arrivals in at every step (see ``gpuworker.models.engine``)."""
        for row in batch.rows:
            self._enqueue(row)
        batch.flush()
        while True:
            for row in batch.arrivals():
                self._enqueue(row)
            if not self.engine.busy:
                self._log_idle()
                return
            self.engine.step()
            batch.full(self.engine.blocked)
            batch.flush()

    def _log_idle(self) -> None:
        """Say the engine has no rows, and how long the device has been busy in all (what its
        rows were charged adds up to it)."""
        log.info("engine_idle", busy_seconds=round(self.decoder.clock.busy_seconds, 6))

    def _enqueue(self, row: Row) -> None:
        try:
            self.engine.add(self._prepare(row))
        except InvalidInput as exc:
            row.fail(exc)

    def handle(self, request: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        """Generate the whole answer: ``{"output", "usage", "finish_reason"}``."""
        answer: dict[str, Any] = {}
        row = Row(request, context, False, lambda _row, kind, value: answer.update({kind: value}))
        self.serve_batch(Batch([row]))
        if "error" in answer:
            raise answer["error"]
        return answer["result"]

    def stream(self, request: dict[str, Any], context: TaskContext) -> Iterator[dict[str, Any]]:
        """Yield ``{"text": ...}`` pieces as tokens are generated; return ``{"usage", "finish_reason"}``.

        The model runs on the calling thread, a step per piece; closing the
        generator stops it.
        """
        pieces: list[dict[str, Any]] = []
        answer: dict[str, Any] = {}

        def receive(_row: Row, kind: str, value: Any, *_tokens: Any) -> None:
            if kind == "piece":
                pieces.append(value)
            else:
                answer[kind] = value

        job = self._prepare(Row(request, context, True, receive))
        self.engine.add(job)
        try:
            while self.engine.busy:
                self.engine.step()
                if pieces:
                    yield _joined_pieces(pieces)
                    pieces.clear()
        finally:
            if not job.ended:
                context.cancelled.set()
                self.engine.step()  # ends the cancelled row and frees its seat
            self._log_idle()
        if pieces:
            yield _joined_pieces(pieces)
        if "error" in answer:
            raise answer["error"]
        return answer["result"]

    def _prepare(self, row: Row) -> Job:
        params = generation_params(row.request, self.options)
        tools = params.tools.functions if params.tools is not None else ()
        rendered = render_prompt(self.tokenizer, params.prompt, self.options.text_as_chat, tools)
        input_ids = self.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"]
        most = params.key_limits.get("max_prompt_tokens")
        if most is not None and len(input_ids) > most:
            raise InvalidInput(f"the prompt has {len(input_ids)} tokens; this key may send at most {most}")
        max_new_tokens = self._token_budget(len(input_ids), params.max_new_tokens)
        job = Job(
            row,
            params,
            list(input_ids),
            max_new_tokens,
            TextAssembler(self.tokenizer, params.stop),
            self.eos_ids,
            constraint=self._constraint(params),
            namer=self._name_token if params.top_logprobs is not None else None,
            tenant=row.context.tenant,
        )
        if row.context.resume:
            self._check_resumable(row.context.resume, max_new_tokens)
            job.resume(row.context.resume)
        return job

    def _check_resumable(self, tokens: tuple[int, ...], max_new_tokens: int) -> None:
        vocabulary = self.model.config.vocab_size
        if len(tokens) > max_new_tokens or any(not 0 <= token < vocabulary for token in tokens):
            raise InvalidInput("the tokens to go on from do not fit this model or the request's budget")

    @property
    def grammars(self) -> Grammars:
        """The tokenizer's grammars, built on first use (llguidance reads the whole vocabulary)."""
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer)
        return self._grammars

    def _constraint(self, params: GenerationParams) -> Constraint | None:
        """The grammar the answer must follow: a forced tool call, or a JSON response format."""
        forced = params.tools.forced if params.tools is not None else ()
        if forced:
            return self.grammars.constraint(tool_call_grammar(list(forced)))
        if params.json_schema is not None:
            return self.grammars.constraint(json_schema_grammar(params.json_schema))
        return None

    def _name_token(self, token: int) -> tuple[str, bytes]:
        raw = self.grammars.token_bytes(token)
        return raw.decode("utf-8", errors="replace"), raw

    def _token_budget(self, prompt_tokens: int, asked: int | None) -> int:
        """New tokens to generate; refuses prompts that are empty or do not fit the context."""
        if prompt_tokens == 0:
            raise InvalidInput("the prompt is empty")
        context = self.decoder.longest_row
        limit = min(self.options.max_prompt_tokens or context, context - 1)
        if prompt_tokens > limit:
            raise InvalidInput(f"the prompt has {prompt_tokens} tokens; at most {limit} are allowed")
        room = context - prompt_tokens
        if asked is None:
            return min(self.options.default_max_new_tokens, room)
        if asked > room:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) and max_new_tokens ({asked}) exceed the "
                f"{context} tokens a request may hold here; ask for at most {room} new tokens"
            )
        return asked


def _joined_pieces(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """Pieces that piled up between two reads, as one: their text, and the usage of the last."""
    return {"text": "".join(piece["text"] for piece in pieces), "usage": pieces[-1]["usage"]}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end an answer: the model's generation config, else the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        return [configured]
    if configured:
        return list(configured)
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _pad_id(model: Any, tokenizer: Any, eos_ids: list[int]) -> int | None:
    for candidate in (model.generation_config.pad_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return int(candidate)
    return eos_ids[0] if eos_ids else None
