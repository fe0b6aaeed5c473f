"""Text generation and chat with a causal language model: the ``text-generation`` algorithm.

The model and tokenizer are loaded once, in the constructor, which also
generates a few tokens so that the first request is not the slow one; the
worker says READY only after that. Requests and responses are described in
``docs/models.md``:

* ``handle`` answers ``{"output", "usage", "finish_reason"}``;
* ``stream`` yields ``{"text": ...}`` pieces and returns
  ``{"usage", "finish_reason"}``; the pieces join to the same ``output``.

Generation stops at the next token when the task is cancelled, its deadline
passes, or (streaming) its consumer goes away.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from transformers import AutoModelForCausalLM, StoppingCriteriaList

from broker.errors import InvalidInput
from gpuworker.algorithm import TaskContext
from gpuworker.models.demo import DEMO_NAME, demo_model_dir
from gpuworker.models.loading import (
    ModelSource,
    context_length,
    device_info,
    load_model,
    load_tokenizer,
    locate,
    select_device,
    select_dtype,
    set_cpu_threads,
    weights_info,
)
from gpuworker.models.options import GenerationOptions, parse_options
from gpuworker.models.params import GenerationParams, parse_generation_request
from gpuworker.models.prompting import render_prompt
from gpuworker.models.stopping import GenerationWatch
from gpuworker.models.textstream import TextAssembler

log = structlog.get_logger(__name__)

_END = object()


@dataclass(slots=True)
class Job:
    """One checked request on its way through the model."""

    params: GenerationParams
    input_ids: torch.Tensor
    max_new_tokens: int
    assembler: TextAssembler
    watch: GenerationWatch
    started: float

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class TextGeneration:
    """A causal language model and its tokenizer, resident on one device.

    ``logger`` is accepted for the Django LLM API server's calling
    convention and not used: this module logs through its own named
    logger. ``model_names``: the first names the model when the ``model``
    option does not (``llmapi worker --model DIR``); with neither, the
    offline demo model is used. ``options`` are the keys of
    :class:`~gpuworker.models.options.GenerationOptions`, from
    ``[worker] options``: where the model comes from, its device and dtype,
    and the bounds and defaults of request parameters.
    """

    def __init__(self, logger: Any = None, model_names: list[str] | None = None, **options: Any) -> None:
        self.options = parse_options(GenerationOptions, options)
        set_cpu_threads(self.options.cpu_threads)
        self.device = select_device(self.options.device)
        self.dtype = select_dtype(self.options.dtype, self.device)
        self.source = self._source(model_names or [])
        self.tokenizer = load_tokenizer(self.source, self.options)
        self.model = load_model(AutoModelForCausalLM, self.source, self.options, self.device, self.dtype)
        self.context_length = context_length(self.model.config, self.tokenizer)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = _pad_id(self.model, self.tokenizer, self.eos_ids)
        if self.options.warmup_tokens:
            self._warm_up()

    def _source(self, model_names: list[str]) -> ModelSource:
        if self.options.model:
            return locate(self.options.model)
        if model_names:
            return locate(model_names[0])
        return ModelSource(str(demo_model_dir(self.options.cache_dir)), DEMO_NAME, local=True)

    def _warm_up(self) -> None:
        started = time.perf_counter()
        tokens = min(self.options.warmup_tokens, self.options.max_new_tokens_limit)
        self.handle({"prompt": "Hello", "max_new_tokens": tokens, "temperature": 0}, TaskContext("warm-up", math.inf))
        log.info("model_warmed_up", model=self.source.name, tokens=tokens, seconds=round(time.perf_counter() - started, 3))

    def describe(self) -> dict[str, Any]:
        """Model, device, dtype, context and size, for the broker's status service."""
        return {
            "model": self.source.name,
            **device_info(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "max_new_tokens_limit": self.options.max_new_tokens_limit,
            **weights_info(self.model),
        }

    # -- serving -------------------------------------------------------------

    def handle(self, request: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        """Generate the whole answer: ``{"output", "usage", "finish_reason"}``."""
        job = self._prepare(request, context)
        generated = self._run(job)
        return {"output": job.assembler.text, **self._summary(job, generated)}

    def stream(self, request: dict[str, Any], context: TaskContext) -> Iterator[dict[str, Any]]:
        """Yield ``{"text": ...}`` pieces as tokens are generated; return ``{"usage", "finish_reason"}``.

        The model runs in a helper thread and hands pieces over a queue;
        pieces that pile up while one is being sent go out as one.
        """
        job = self._prepare(request, context)
        pieces: queue.Queue[Any] = queue.Queue()
        job.assembler.on_text = pieces.put
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=self._run_into, args=(job, outcome, pieces), name="generate", daemon=True)
        thread.start()
        try:
            for text in _joined_pieces(pieces):
                yield {"text": text}
        finally:
            job.watch.abort.set()  # no-op once finished; stops the model if our consumer left
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return self._summary(job, outcome["generated"])

    def _run_into(self, job: Job, outcome: dict[str, Any], pieces: queue.Queue[Any]) -> None:
        try:
            outcome["generated"] = self._run(job)
        except Exception as exc:  # handed to the consuming thread, which raises it
            outcome["error"] = exc
        finally:
            pieces.put(_END)

    def _prepare(self, request: dict[str, Any], context: TaskContext) -> Job:
        params = parse_generation_request(request, self.options)
        rendered = render_prompt(self.tokenizer, params.prompt, self.options.text_as_chat)
        encoded = self.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens, return_tensors="pt")
        input_ids = encoded["input_ids"]
        max_new_tokens = self._token_budget(input_ids.shape[1], params.max_new_tokens)
        assembler = TextAssembler(self.tokenizer, params.stop)
        watch = GenerationWatch(input_ids.shape[1], assembler, context.cancelled, context.deadline)
        return Job(params, input_ids.to(self.device), max_new_tokens, assembler, watch, time.perf_counter())

    def _token_budget(self, prompt_tokens: int, asked: int | None) -> int:
        """New tokens to generate; refuses prompts that are empty or do not fit the context."""
        if prompt_tokens == 0:
            raise InvalidInput("the prompt is empty")
        limit = min(self.options.max_prompt_tokens or self.context_length, self.context_length - 1)
        if prompt_tokens > limit:
            raise InvalidInput(f"the prompt has {prompt_tokens} tokens; at most {limit} are allowed")
        room = self.context_length - prompt_tokens
        if asked is None:
            return min(self.options.default_max_new_tokens, room)
        if asked > room:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) and max_new_tokens ({asked}) exceed the model's "
                f"context of {self.context_length} tokens; ask for at most {room} new tokens"
            )
        return asked

    def _run(self, job: Job) -> list[int]:
        """Run the model for ``job``; returns the generated ids and finishes its text."""
        if job.params.seed is not None:
            torch.manual_seed(job.params.seed)
        extra: dict[str, Any] = {"eos_token_id": self.eos_ids} if self.eos_ids else {}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=job.input_ids,
                attention_mask=torch.ones_like(job.input_ids),
                max_new_tokens=job.max_new_tokens,
                stopping_criteria=StoppingCriteriaList([job.watch]),
                pad_token_id=self.pad_id,
                **extra,
                **_sampling(job.params),
            )
        job.watch.catch_up(output)
        job.assembler.finish()
        return output[0, job.prompt_tokens:].tolist()

    def _summary(self, job: Job, generated: list[int]) -> dict[str, Any]:
        finish_reason = self._finish_reason(job, generated)
        seconds = time.perf_counter() - job.started
        log.info(
            "generation_finished",
            prompt_tokens=job.prompt_tokens,
            completion_tokens=len(generated),
            finish_reason=finish_reason,
            interrupted=job.watch.interrupted,
            seconds=round(seconds, 4),
            tokens_per_second=round(len(generated) / seconds, 1) if seconds > 0 else None,
        )
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": len(generated)}
        return {"usage": usage, "finish_reason": finish_reason}

    def _finish_reason(self, job: Job, generated: list[int]) -> str:
        if job.watch.interrupted is not None:
            return "cancelled"
        if job.assembler.stopped or (generated and generated[-1] in self.eos_ids):
            return "stop"
        return "length"


def _sampling(params: GenerationParams) -> dict[str, Any]:
    """Greedy decoding at temperature 0; otherwise temperature and nucleus sampling, no top-k."""
    if params.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}


def _joined_pieces(pieces: queue.Queue[Any]) -> Iterator[str]:
    """Texts from ``pieces`` until the end marker, joining those already waiting."""
    while True:
        batch = [pieces.get()]
        while batch[-1] is not _END and not pieces.empty():
            batch.append(pieces.get_nowait())
        ended = batch[-1] is _END
        text = "".join(batch[:-1] if ended else batch)
        if text:
            yield text
        if ended:
            return


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
