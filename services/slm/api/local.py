"""Tier A: a request answered by this box's engine. Check what the model can do, build
the prompt and its sampling parameters, queue the job (429 when full, 503 over the memory
budget), wait for its first event (so errors before any output keep their HTTP status),
then stream or collect. A client that disconnects cancels its job."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response

from slm.api import schemas
from slm.api.audit import Auditor
from slm.api.context import RequestContext, log_request
from slm.api.errors import as_request_error, tier_a_edge
from slm.api.replies import SSE_DONE, SSE_HEADERS, Reply, embeddings_list, error_event, sse
from slm.api.streaming import JobStreamingResponse, next_event
from slm.errors import ContextLengthExceeded, InvalidRequest, LedgerUnavailable, RequestError
from slm.server.state import Doorman
from slm.tier_a.engine import Engine, GenerationResult, SamplingParams
from slm.tier_a.scheduler import DoneEvent, ErrorEvent, Event, Job, Scheduler, TextEvent


def context_check(engine: Engine, prompt: list[int], max_tokens: int | None) -> int:
    """Refuse prompts that do not fit; return the completion budget."""
    n_ctx = engine.n_ctx
    if len(prompt) >= n_ctx:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {n_ctx} tokens, but the prompt "
            f"has {len(prompt)} tokens", param="messages",
        )
    room = n_ctx - len(prompt)
    if max_tokens is not None and max_tokens > room:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {n_ctx} tokens; you requested "
            f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, "
            f"{max_tokens} for the completion)", param="max_tokens",
        )
    return max_tokens if max_tokens is not None else room


class LocalTier:
    """Completions and embeddings from the local engine of one Doorman."""

    def __init__(self, doorman: Doorman, auditor: Auditor) -> None:
        self.d = doorman
        self.auditor = auditor

    def _sampling(
        self, engine: Engine, req: schemas._Sampling, max_tokens: int, grammar: str | None
    ) -> SamplingParams:
        adapters = self.d.adapters
        return SamplingParams(
            adapter=adapters.select(req.model) if adapters.owns(req.model) else None,
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=schemas.stop_sequences(req.stop),
            grammar=grammar,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            logit_bias=schemas.logit_bias(req.logit_bias, engine.n_vocab),
        )

    @tier_a_edge
    async def chat(
        self, ctx: RequestContext, req: schemas.ChatCompletionRequest,
        messages: list[dict[str, str]],
    ) -> Response:
        """``messages`` are ``req.messages`` as :func:`schemas.chat_messages` checked them."""
        schemas.check_sampling(req)
        if req.tools:
            raise schemas.Unsupported("tools are not supported by this model server",
                                      param="tools")
        engine, _ = self.d.require_engine()
        grammar = schemas.grammar_for(req.response_format)
        if grammar is not None:
            engine.check_grammar(grammar)
        prompt = engine.chat_prompt(messages)
        wanted = req.max_completion_tokens if req.max_completion_tokens is not None else (
            req.max_tokens)
        max_tokens = context_check(engine, prompt, wanted)
        params = self._sampling(engine, req, max_tokens, grammar)
        if ctx.with_documents:
            params = dataclasses.replace(params, snapshot=False)
        return await self._run(ctx, req, prompt, params, chat=True)

    @tier_a_edge
    async def completion(self, ctx: RequestContext, req: schemas.CompletionRequest) -> Response:
        schemas.check_sampling(req)
        if req.echo:
            raise schemas.Unsupported("echo is not supported", param="echo")
        if req.suffix:
            raise schemas.Unsupported("suffix is not supported", param="suffix")
        if req.best_of not in (None, 1):
            raise schemas.Unsupported("only best_of=1 is supported", param="best_of")
        engine, _ = self.d.require_engine()
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise schemas.Unsupported("exactly one prompt per request is supported",
                                      param="prompt")
        prompt = engine.tokenize(prompts[0], add_special=True)
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        max_tokens = context_check(engine, prompt, req.max_tokens or 16)
        params = self._sampling(engine, req, max_tokens, None)
        return await self._run(ctx, req, prompt, params, chat=False)

    @tier_a_edge
    async def embeddings(self, ctx: RequestContext, req: schemas.EmbeddingRequest) -> Response:
        engine, scheduler = self.d.require_engine()
        if not engine.info.supports_embeddings:
            raise schemas.Unsupported(
                f"model {self.d.model_id!r} does not produce embeddings",
                param="model", code="embeddings_not_supported",
            )
        if req.dimensions is not None:
            raise schemas.Unsupported("dimensions is not supported", param="dimensions")
        if req.encoding_format not in (None, "float"):
            raise schemas.Unsupported("only encoding_format 'float' is supported",
                                      param="encoding_format")
        raw = req.input
        ctx.note_prompt(raw)
        if isinstance(raw, str):
            inputs = [engine.tokenize(raw)]
        elif raw and all(isinstance(x, int) for x in raw):
            inputs = [list(raw)]  # type: ignore[arg-type]
        elif raw and all(isinstance(x, str) for x in raw):
            inputs = [engine.tokenize(s) for s in raw]  # type: ignore[arg-type]
        elif raw and all(isinstance(x, list) for x in raw):
            inputs = [list(x) for x in raw]  # type: ignore[arg-type]
        else:
            raise InvalidRequest("input must not be empty", param="input")
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if any(not engine.token_id_valid(t) for t in tokens):
                raise InvalidRequest(f"input[{i}] has token ids outside the vocabulary",
                                     param="input")
            if len(tokens) > engine.n_ctx:
                raise ContextLengthExceeded(
                    f"input[{i}] has {len(tokens)} tokens; the maximum is {engine.n_ctx}",
                    param="input",
                )
        job = self.d.new_job(ctx.request_id)
        job.embed_inputs = inputs
        event = await self._admit(ctx, scheduler, job)
        assert isinstance(event, DoneEvent)
        return JSONResponse(embeddings_list(event.result, self.d.model_id,
                                            sum(len(t) for t in inputs)))

    # -- running a completion -----------------------------------------------------------

    async def _admit(self, ctx: RequestContext, scheduler: Scheduler, job: Job) -> Event:
        """Queue ``job`` (429 when full, 503 over the memory budget) and wait for its first
        event; a failure before any output is raised, so it keeps its HTTP status."""
        self.d.check_memory()
        scheduler.submit(job)
        disconnected = asyncio.ensure_future(ctx.client_gone())
        try:
            first = await next_event(job, disconnected)
        finally:
            disconnected.cancel()
        if isinstance(first, ErrorEvent):
            raise as_request_error(first.error)
        return first

    async def _run(
        self, ctx: RequestContext, req: schemas._Sampling, prompt: list[int],
        params: SamplingParams, *, chat: bool,
    ) -> Response:
        _, scheduler = self.d.require_engine()
        job = self.d.new_job(ctx.request_id)
        job.prompt, job.params = prompt, params
        first = await self._admit(ctx, scheduler, job)
        model = f"{self.d.model_id}:{params.adapter}" if params.adapter else self.d.model_id
        reply = Reply(model, chat=chat, request_id=ctx.request_id)
        ctx.prompt_tokens = len(prompt)
        if req.stream:
            ctx.streaming = True
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return JobStreamingResponse(
                job,
                # if the body never starts (client gone first), the request is still recorded
                lambda: self.auditor.client_gone(ctx),
                self._stream(ctx, job, first, reply, include_usage),
                media_type="text/event-stream", headers=SSE_HEADERS,
            )
        return JSONResponse(await self._collect(ctx, job, first, reply))

    async def _collect(
        self, ctx: RequestContext, job: Job, first: Event, reply: Reply
    ) -> dict[str, object]:
        """The whole answer of a non-streamed completion."""
        texts: list[str] = []
        event: Event = first
        disconnected = asyncio.ensure_future(ctx.client_gone())
        try:
            while isinstance(event, TextEvent):
                texts.append(event.text)
                event = await next_event(job, disconnected)
        finally:
            disconnected.cancel()
        if isinstance(event, ErrorEvent):
            raise as_request_error(event.error)
        assert isinstance(event, DoneEvent)
        result: GenerationResult = event.result
        ctx.note_finish(result.completion_tokens, result.finish_reason)
        return reply.whole("".join(texts), result)

    async def _stream(
        self, ctx: RequestContext, job: Job, first: Event, reply: Reply, include_usage: bool
    ) -> AsyncIterator[bytes]:
        ended = False
        try:
            if reply.chat:
                yield sse(reply.chunk({"role": "assistant", "content": ""}))
            event = first
            while isinstance(event, TextEvent):
                frames = [reply.text_frame(event.text)]
                following: Event | None = None
                while following is None and not job.events.empty():
                    queued = job.events.get_nowait()  # catch up in one write
                    if isinstance(queued, TextEvent):
                        frames.append(reply.text_frame(queued.text))
                    else:
                        following = queued
                yield b"".join(frames)
                event = following or await job.events.get()
            if isinstance(event, DoneEvent):
                result: GenerationResult = event.result
                ctx.note_finish(result.completion_tokens, result.finish_reason)
                yield sse(reply.chunk({} if reply.chat else "", finish=result.finish_reason))
                if include_usage:
                    yield sse(reply.usage_chunk(result))
                try:  # [DONE] acknowledges the answer: only once its record is durable
                    await self.auditor.commit(ctx, 200)
                except LedgerUnavailable as exc:
                    err: RequestError = exc
                else:
                    ended = True
                    yield SSE_DONE
                    return
            else:
                assert isinstance(event, ErrorEvent)
                err = as_request_error(event.error)
            ctx.extra_log["error"] = err.code
            if not isinstance(err, LedgerUnavailable):
                self.auditor.commit_nowait(ctx, err.status, err.code)
            ended = True
            yield error_event(err)
        finally:
            if not ended:
                ctx.extra_log["cancelled"] = True
                self.auditor.client_gone(ctx)
            job.cancel.set()  # no-op after the end; stops the decode if the client left
            log_request(ctx, 200)
