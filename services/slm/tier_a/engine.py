"""Tier A: quantised CPU inference on one GGUF model through llama.cpp's C API.

llama-cpp-python's high-level ``Llama`` samples every token in Python (numpy over the whole
vocabulary); here the token loop uses llama.cpp's own sampler chain through the low-level
ctypes API, so the per-token cost is one ``llama_decode`` and one ``llama_sampler_sample``.

An Engine is not thread-safe for decoding: exactly one thread (the scheduler's worker)
calls ``generate``/``embed``/``warm_up``. ``tokenize`` only reads the vocabulary and may be
called from any thread, as llama.cpp's own server does.

Import this module only after ``OMP_*`` variables are final: libgomp reads them when
``llama_cpp`` loads its shared libraries.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import llama_cpp as C

from slm.errors import EngineError, ModelError
from slm.model.file import ModelFile
from slm.model.planner import KvType
from slm.tier_a.chat_template import ChatTemplate
from slm.tier_a.errors import InputRejected, NotSupportedByModel
from slm.tier_a.prompt_cache import PromptCache
from slm.tier_a.stops import StopMatcher

BAN_BIAS = -1e9  # what logit_bias -100 ("ban") becomes
RESTORE_MIN_GAIN = 16  # tokens a snapshot must save over the live prefix to be restored


class FinishReason(StrEnum):
    """Why a generation ended (OpenAI's ``finish_reason``)."""

    STOP = "stop"  # an end-of-generation token or a stop sequence
    LENGTH = "length"  # max_tokens, or the context is full

_LOG_CALLBACK = C.llama_log_callback(lambda level, text, user_data: None)


def quiet_llama_logs() -> None:
    """Silence llama.cpp's stderr chatter (our logs are one line per event)."""
    C.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


@dataclass(frozen=True)
class SamplingParams:
    """What a caller may ask of one generation."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    adapter: str | None = None  # a LoRA adapter loaded with Engine.load_adapter
    snapshot: bool = True  # may the prompt cache keep this request's KV (not documents')


@dataclass
class GenerationResult:
    """How a generation ended and what it cost."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    first_token_seconds: float | None = None

    @property
    def prompt_tokens_per_second(self) -> float:
        """Prompt processing speed of the tokens actually decoded."""
        decoded = self.prompt_tokens - self.cached_prompt_tokens
        return decoded / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_second(self) -> float:
        """Generation speed after the first token."""
        return (
            self.completion_tokens / self.generation_seconds
            if self.generation_seconds > 0
            else 0.0
        )


class Interrupted(Exception):
    """Raised inside the engine when the caller's interrupt check fires."""


@dataclass
class ModelInfo:
    """Facts about the loaded model, for /v1/models and the logs."""

    n_ctx: int
    n_ctx_train: int
    n_params: int
    n_embd: int
    n_vocab: int
    architecture: str
    supports_embeddings: bool
    chat_template_fallback: bool


class Engine:
    """One loaded model and its llama.cpp context(s)."""

    def __init__(
        self, model_file: ModelFile, *, n_ctx: int, n_threads: int, n_batch: int,
        kv_type: str = "f16",
    ) -> None:
        C.llama_backend_init()
        mparams = C.llama_model_default_params()
        model = C.llama_model_load_from_file(str(model_file.path).encode(), mparams)
        if not model:
            raise ModelError(f"llama.cpp could not load the model {model_file.path}")
        self._model = model
        self._vocab = C.llama_model_get_vocab(model)
        self.n_vocab: int = C.llama_vocab_n_tokens(self._vocab)
        self._n_swa = C.llama_model_n_swa(model)  # 0 without sliding-window attention
        self.n_batch = max(1, min(n_batch, n_ctx))
        self._kv_type = kv_type
        self._ctx: C.llama_context_p | None = self._new_context(
            n_ctx, n_threads, embeddings=False)
        self.n_ctx: int = C.llama_n_ctx(self._ctx)
        self._mem = C.llama_get_memory(self._ctx)
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._cached: list[int] = []  # tokens whose KV entries are in sequence 0
        # name -> (handle, scale, identity: what a snapshot computed with it is keyed by)
        self._adapters: dict[str, tuple[C.llama_adapter_lora_p, float, str]] = {}
        self._active_adapter: str | None = None  # the adapter _cached was computed with
        self.prompt_cache: PromptCache | None = None  # snapshots of recent prompts' KV
        self._pending_snapshot = False  # the last generation may be snapshotted
        self._interrupt: Callable[[], bool] | None = None
        self._abort_cb = C.ggml_abort_callback(self._abort_requested)

        arch = self.meta("general.architecture") or "unknown"
        pooling = self.meta(f"{arch}.pooling_type")
        self._embed_ctx = None
        if pooling is not None and pooling != "0":
            self._embed_ctx = self._new_context(n_ctx, n_threads, embeddings=True)
        self._special_texts = self._control_token_texts()
        self.template = ChatTemplate(
            self.meta("tokenizer.chat_template"),
            bos_token=self._token_text(C.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(C.llama_vocab_eos(self._vocab)),
        )
        self.info = ModelInfo(
            n_ctx=self.n_ctx,
            n_ctx_train=C.llama_model_n_ctx_train(model),
            n_params=C.llama_model_n_params(model),
            n_embd=C.llama_model_n_embd(model),
            n_vocab=self.n_vocab,
            architecture=arch,
            supports_embeddings=self._embed_ctx is not None,
            chat_template_fallback=self.template.is_fallback,
        )

    # -- set-up -------------------------------------------------------------------------

    def _new_context(self, n_ctx: int, n_threads: int, *, embeddings: bool) -> C.llama_context_p:
        cparams = C.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx if embeddings else self.n_batch
        cparams.n_ubatch = n_ctx if embeddings else self.n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.embeddings = embeddings
        cparams.no_perf = True
        # Sliding-window layers keep only their window (llama.cpp defaults to full-size
        # caches for them); the planner counts the same.
        cparams.swa_full = False
        if self._kv_type != KvType.F16:  # a quantised V cache needs flash attention
            cparams.type_k = cparams.type_v = KvType(self._kv_type).ggml_type
            cparams.flash_attn_type = 1
        ctx: C.llama_context_p | None = C.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens")
        return ctx

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None when the key is absent."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def _control_token_texts(self) -> tuple[str, ...]:
        texts = []
        for token in range(self.n_vocab):
            if C.llama_vocab_get_attr(self._vocab, token) & C.LLAMA_TOKEN_ATTR_CONTROL:
                text = self._token_text(token)
                if text:
                    texts.append(text)
        return tuple(texts)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text: bytes = C.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace")

    def load_adapter(self, name: str, path: str, scale: float, sha256: str) -> None:
        """Load a GGUF LoRA adapter for requests that name it (ModelError if llama.cpp
        refuses it, e.g. tensors that do not match this model)."""
        handle = C.llama_adapter_lora_init(self._model, path.encode())
        if not handle:
            raise ModelError(f"adapter {name!r}: llama.cpp could not apply {path} to this "
                             "model (see the log for the tensor it refused)")
        self._adapters[name] = (handle, scale, f"{name}:{sha256}:{scale:g}")

    def _use_adapter(self, name: str | None) -> None:
        """Put ``name``'s adapter (or none) on the context; cached KV entries were computed
        with the previous one, so they go."""
        if name == self._active_adapter:
            return
        if name is None:
            rc = C.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            handle, scale, _ = self._adapters[name]
            # llama-cpp-python types the handle as c_void_p but the array element (what
            # llama_adapter_lora_init returns at run time) as POINTER(c_void_p)
            rc = C.llama_set_adapters_lora(
                self._ctx, (C.llama_adapter_lora_p_ctypes * 1)(handle),  # type: ignore[misc]
                1, (ctypes.c_float * 1)(scale))
        if rc != 0:
            raise EngineError(f"llama.cpp could not set the adapter {name!r} (code {rc})")
        self._forget_cache()
        self._active_adapter = name

    def close(self) -> None:
        """Free the llama.cpp objects (the engine is unusable after); adapters go with the
        model."""
        self._adapters.clear()
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
        if self._embed_ctx:
            C.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._model:
            C.llama_model_free(self._model)
            self._model = None

    # -- tokens -------------------------------------------------------------------------

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Tokens of ``text``; with ``parse_special`` special-token text (e.g.
        ``<|im_start|>``) becomes the control token, else it is tokenized as text."""
        if not text:
            return []
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Tokens of ``messages`` rendered through the chat template.

        The template's own special-token text (``<|im_start|>`` ...) becomes control
        tokens; the same text inside a message's content stays plain text, so a caller
        cannot forge a turn boundary (e.g. a fake system turn) from inside a message.
        """
        rendered = self.template.render(messages)
        bos = self.template.bos_token
        add_special = not (bos and rendered.startswith(bos))
        if not any(sp in m["content"] for m in messages for sp in self._special_texts):
            return self.tokenize(rendered, add_special=add_special)
        tokens: list[int] = []
        cursor = 0
        for message in messages:
            content = message["content"]
            start = rendered.find(content, cursor) if content else -1
            if start < 0:
                if any(sp in content for sp in self._special_texts):
                    raise InputRejected(
                        "a message contains special-token text that the chat template "
                        "rewrites; it cannot be kept as plain text", param="messages",
                    )
                continue
            tokens += self.tokenize(rendered[cursor:start], add_special=add_special and not tokens)
            tokens += self.tokenize(content, add_special=False, parse_special=False)
            cursor = start + len(content)
        tokens += self.tokenize(rendered[cursor:], add_special=add_special and not tokens)
        return tokens

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def token_id_valid(self, token: int) -> bool:
        """Whether ``token`` is in the vocabulary (for logit_bias)."""
        return 0 <= token < self.n_vocab

    # -- decoding -----------------------------------------------------------------------

    def _abort_requested(self, _data: ctypes.c_void_p) -> bool:
        check = self._interrupt
        return bool(check and check())

    def _decode(self, tokens: list[int], start_pos: int, *, logits_last: bool = True) -> None:
        """Decode ``tokens`` at positions ``start_pos...`` into sequence 0, in batches."""
        batch = self._batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            last_chunk = offset + self.n_batch >= len(tokens)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = start_pos + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            if last_chunk and logits_last:
                batch.logits[len(chunk) - 1] = 1
            batch.n_tokens = len(chunk)
            rc = C.llama_decode(self._ctx, batch)
            if rc != 0:
                # Whatever this batch left in the KV cache is unknown: start clean next time.
                self._forget_cache()
                if rc == 2:
                    raise Interrupted()
                raise EngineError(f"llama_decode failed with code {rc}")
            self._cached.extend(chunk)

    def _forget_cache(self) -> None:
        C.llama_memory_clear(self._mem, True)
        self._cached = []

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the KV entries of the longest common prefix with the last request."""
        n = 0
        limit = min(len(self._cached), len(prompt) - 1)  # the last token must be decoded
        while n < limit and self._cached[n] == prompt[n]:
            n += 1
        return self._trim_to(n)

    def _trim_to(self, n: int) -> int:
        """Cut sequence 0 back to its first ``n`` tokens; 0 (and an empty cache) when that
        is not possible: a recurrent state cannot be cut, and a sliding-window cache that
        already dropped positions the next token must see (as llama-server checks)."""
        if n < len(self._cached):
            if not C.llama_memory_seq_rm(self._mem, 0, n, -1):
                self._forget_cache()
                return 0
            del self._cached[n:]
        if n and self._n_swa and C.llama_memory_seq_pos_min(self._mem, 0) > max(
                0, n - self._n_swa):
            self._forget_cache()
            return 0
        return n

    def _adapter_identity(self) -> str | None:
        name = self._active_adapter
        return None if name is None else self._adapters[name][2]

    def _restore_snapshot(self, prompt: list[int], cached: int) -> int:
        """Swap the live KV entries for a prompt-cache snapshot when it shares more of
        ``prompt`` (by ``RESTORE_MIN_GAIN`` tokens); the prefix now in the cache."""
        cache = self.prompt_cache
        if cache is None:
            return cached
        snap, n = cache.best(prompt, self._adapter_identity())
        if snap is None or n < cached + RESTORE_MIN_GAIN:
            cache.misses += 1
            return cached
        state = cache.state_of(snap)
        if state is None:
            return cached
        self._forget_cache()
        buf = (ctypes.c_uint8 * len(state)).from_buffer(state)
        if C.llama_state_seq_set_data(self._ctx, buf, len(state), 0) != len(state):
            cache.drop(snap)  # made for another context (size, KV type): never again
            self._forget_cache()
            return 0
        self._cached = list(snap.tokens)
        if self._trim_to(n) != n:
            return 0
        cache.hits += 1
        return n

    def take_pending_snapshot(self) -> None:
        """Keep the KV state of the last generation (what sequence 0 holds) in the prompt
        cache, if it wants it; the worker calls this after the answer went out."""
        cache, due, self._pending_snapshot = self.prompt_cache, self._pending_snapshot, False
        tokens, adapter = self._cached, self._adapter_identity()
        if cache is None or not due or len(tokens) < cache.min_tokens:
            return
        snap, n = cache.best(tokens, adapter)
        if snap is not None and len(snap.tokens) == len(tokens) and n == len(tokens) - 1:
            return  # kept already
        size = C.llama_state_seq_get_size(self._ctx, 0)
        if not cache.wants(len(tokens), size):
            return
        cache.make_room(tokens, adapter, size)
        state = bytearray(size)
        written = C.llama_state_seq_get_data(
            self._ctx, (ctypes.c_uint8 * size).from_buffer(state), size, 0)
        if written == size:
            cache.add(list(tokens), adapter, state)

    def _make_sampler(self, params: SamplingParams) -> C.llama_sampler_p:
        chain: C.llama_sampler_p = C.llama_sampler_chain_init(
            C.llama_sampler_chain_default_params())
        if params.logit_bias:
            arr = (C.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias):
                arr[i].token = tok  # type: ignore[assignment]  # typed c_int32; ctypes takes ints
                # Finite even at -100: if biases rule out every token a grammar allows,
                # the grammar must still find one, or llama.cpp aborts the process.
                arr[i].bias = BAN_BIAS if bias <= -100 else bias
            C.llama_sampler_chain_add(
                chain, C.llama_sampler_init_logit_bias(self.n_vocab, len(arr), arr)
            )
        if params.frequency_penalty or params.presence_penalty:
            C.llama_sampler_chain_add(
                chain,
                C.llama_sampler_init_penalties(  # last_n = the context, as llama-server's -1
                    self.n_vocab, self.n_ctx, 1.0, params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.grammar is not None:
            grammar = C.llama_sampler_init_grammar(
                self._vocab, params.grammar.encode(), b"root"
            )
            if not grammar:
                C.llama_sampler_free(chain)
                raise NotSupportedByModel(
                    "the grammar for response_format could not be compiled",
                    param="response_format")
            C.llama_sampler_chain_add(chain, grammar)
        if params.temperature <= 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        else:
            if params.top_p < 1.0:
                C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(params.top_p, 1))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(params.temperature))
            # Any integer seed maps into 0..2**32-2; 2**32-1 is llama.cpp's "random seed".
            seed = C.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % 0xFFFFFFFF
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed))
        return chain

    def check_grammar(self, grammar: str) -> None:
        """Raise NotSupportedByModel if llama.cpp cannot compile ``grammar`` (call before
        queueing)."""
        sampler = C.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise NotSupportedByModel("the grammar for response_format could not be compiled",
                                      param="response_format")
        C.llama_sampler_free(sampler)

    def generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None],
        interrupted: Callable[[], bool],
    ) -> GenerationResult:
        """Decode ``prompt``, then sample until EOG, a stop string, ``max_tokens`` or a full
        context. Text goes to ``on_text`` as it becomes final (stop strings held back).

        Raises Interrupted as soon as ``interrupted()`` is true: between tokens, and inside a
        long prompt decode through llama.cpp's abort callback.
        """
        if not prompt:
            raise EngineError("empty prompt")
        started = time.monotonic()
        self._pending_snapshot = False
        self._use_adapter(params.adapter)
        cached = self._restore_snapshot(prompt, self._reuse_prefix(prompt))
        self._interrupt = interrupted
        C.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            self._decode(prompt[cached:], cached)
        finally:
            self._interrupt = None
            C.llama_set_abort_callback(self._ctx, C.ggml_abort_callback(0), None)
        prompt_done = time.monotonic()
        result = GenerationResult(
            finish_reason=FinishReason.LENGTH,
            prompt_tokens=len(prompt),
            completion_tokens=0,
            cached_prompt_tokens=cached,
            prompt_seconds=prompt_done - started,
        )
        sampler = self._make_sampler(params)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop)
        try:
            while True:
                token = C.llama_sampler_sample(sampler, self._ctx, -1)
                if C.llama_vocab_is_eog(self._vocab, token):
                    result.finish_reason = FinishReason.STOP
                    break
                result.completion_tokens += 1
                if result.first_token_seconds is None:
                    result.first_token_seconds = time.monotonic() - started
                text = stops.feed(decoder.decode(self._piece(token)))
                if text:
                    on_text(text)

                if stops.stopped:
                    result.finish_reason = FinishReason.STOP
                    break
                if result.completion_tokens >= params.max_tokens:
                    break
                if len(self._cached) >= self.n_ctx:
                    break
                if interrupted():
                    raise Interrupted()
                self._decode([token], len(self._cached))
            if not stops.stopped:
                tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
                if tail:
                    on_text(tail)
        finally:
            C.llama_sampler_free(sampler)
            result.generation_seconds = time.monotonic() - prompt_done
        # The KV now holds the prompt and the answer, which the next turn of this
        # conversation starts with; the worker snapshots it once the answer is out.
        self._pending_snapshot = params.snapshot
        return result

    def warm_up(self) -> None:
        """Decode one token and sample one, proving the model computes; leave no state."""
        bos = C.llama_vocab_bos(self._vocab)
        first = bos if bos >= 0 else 0
        self.generate(
            [first], SamplingParams(max_tokens=1, temperature=0.0),
            on_text=lambda _t: None, interrupted=lambda: False,
        )
        self._forget_cache()

    # -- embeddings ---------------------------------------------------------------------

    def embed(self, tokens: list[int]) -> list[float]:
        """The pooled, L2-normalised embedding of ``tokens`` (embedding models only)."""
        ctx = self._embed_ctx
        if ctx is None:
            raise NotSupportedByModel(
                "this model does not produce embeddings (no pooling in its GGUF metadata)",
                param="model", feature="embeddings_not_supported",
            )
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        batch = C.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = len(tokens)
            rc = C.llama_decode(ctx, batch)
            if rc != 0:
                raise EngineError(f"llama_decode (embeddings) failed with code {rc}")
            ptr = C.llama_get_embeddings_seq(ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vec = [ptr[i] for i in range(C.llama_model_n_embd(self._model))]
        finally:
            C.llama_batch_free(batch)
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]
