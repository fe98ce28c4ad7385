"""Any OpenAI-compatible chat server: vLLM, Xinference, Ollama, llama.cpp's server, llama-cpp-python, LocalAI.

Speaks ``POST {base_url}/chat/completions`` with ``stream: true`` (server-sent events) over httpx. Failures are
``ModelServerError`` with a hint: a server that cannot be reached is retried ``llm.max_retries`` times with
backoff (only before the first token: a half-streamed answer is never silently repeated); a server that stops
in the middle of an answer, answers with an error, or sends nothing for ``llm.timeout_s`` fails at once.

Token counts come from the model's own tokenizer: a local copy (``llm.tokenizer_path``: a GGUF or a Hugging Face
directory) when configured, else the server's tokenize endpoint (llama.cpp, llama-cpp-python, vLLM), else a
deliberately high estimate so that the prompt still fits.

The server tokenizes the prompt it renders, special tokens included, so kb neutralises the known families'
special-token strings (and those of ``llm.tokenizer_path``'s vocabulary) in message content before sending.
Proxy variables (``HTTP(S)_PROXY``) are ignored unless ``llm.use_proxy_env``: the server is usually on this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

from kb_app.models.base import Message
from kb_app.models.choices import match_top_logprobs
from kb_app.models.errors import LogprobsUnavailableError, ModelNotFoundError, ModelServerError
from kb_app.models.special_tokens import KNOWN_SPECIAL_TOKENS, Neutraliser, gguf_special_tokens, hf_special_tokens

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    """An upper-side guess when no tokenizer is reachable: one token per CJK character, one per 3 other chars."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 3)


_NO_LOGPROBS_HINT = (
    "use a server that returns logprobs (vLLM, llama.cpp's server with logits_all) or set refusal.check: similarity"
)


class OpenAICompatibleModel:
    """A chat model behind an OpenAI-compatible HTTP API. Nothing is contacted until it is first used."""

    scores_replies = False  # the chat API scores no given reply
    reads_first_token_logprobs = True  # if the server sends logprobs, which only the first request tells

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        n_ctx: int = 4096,
        tokenizer_path: str | None = None,
        backoff_s: float = 0.5,
        use_proxy_env: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._model = model
        self._n_ctx = n_ctx
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # connect fails fast (a server that is down refuses at once); reads wait up to timeout_s per token
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), trust_env=use_proxy_env
        )
        self._context_length: int | None = None
        self._counter: Callable[[str], int] | None = None
        specials: list[str] = []
        if tokenizer_path:
            self._counter, specials = self._local_tokenizer(tokenizer_path)
        self.neutralise = Neutraliser([*KNOWN_SPECIAL_TOKENS, *specials])

    # -- identity --------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._model or f"(first model at {self.base_url})"

    @property
    def context_length(self) -> int:
        """``llm.n_ctx``, lowered to what the server reports (vLLM ``max_model_len``, llama.cpp ``n_ctx``)."""
        if self._context_length is None:
            reported = None
            try:
                reported = self._server_context()
            except ModelServerError as exc:
                log.warning("could not ask %s for its context length: %s", self.base_url, exc.message)
            self._context_length = min(self._n_ctx, reported) if reported and self._n_ctx else reported or self._n_ctx
        return self._context_length

    def models(self, retries: int | None = None) -> list[dict[str, Any]]:
        """The server's ``/models`` list."""
        response = self._request("GET", "/models", retries=retries)
        return list(response.json().get("data") or [])

    def model_name(self) -> str:
        """The configured model name, or the first one the server lists."""
        if self._model is None:
            listed = self.models()
            if not listed:
                raise ModelServerError(
                    f"the server at {self.base_url} lists no models", "load a model in the server, or set llm.model"
                )
            self._model = str(listed[0]["id"])
        return self._model

    def _server_context(self) -> int | None:
        for entry in self.models(retries=0):
            if self._model is None or entry.get("id") == self._model:
                meta = entry.get("meta") or {}
                for value in (entry.get("max_model_len"), entry.get("context_length"), meta.get("n_ctx_train")):
                    if isinstance(value, int) and value > 0:
                        return value
        try:  # llama.cpp's own server
            props = self._request("GET", "/props", root=True, retries=0).json()
            value = (props.get("default_generation_settings") or {}).get("n_ctx")
            return value if isinstance(value, int) and value > 0 else None
        except ModelServerError:
            return None

    # -- tokens ----------------------------------------------------------------------------------------------

    @staticmethod
    def _local_tokenizer(tokenizer_path: str) -> tuple[Callable[[str], int], list[str]]:
        """A token counter from the model's own tokenizer, and its special-token strings."""
        path = Path(tokenizer_path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(
                f"llm.tokenizer_path {tokenizer_path!r} does not exist",
                "point it at the model's GGUF file or Hugging Face directory (only the tokenizer is read), or unset it",
            )
        if path.is_file():
            from llama_cpp import Llama

            vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)

            def count(text: str) -> int:
                return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

            return count, gguf_special_tokens(vocab)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False)), hf_special_tokens(tokenizer)

    def _server_counter(self) -> Callable[[str], int]:
        """The first tokenize endpoint the server has, or the estimate."""
        if self._model is None:  # vLLM's /tokenize wants the model's name
            with contextlib.suppress(ModelServerError, IndexError, KeyError):
                self._model = str(self.models(retries=0)[0]["id"])
        probes: list[tuple[str, Callable[[str], dict], Callable[[dict], int]]] = [
            ("/extras/tokenize/count", lambda t: {"input": t, "model": self._model}, lambda r: r["count"]),
            ("/tokenize", lambda t: {"content": t, "model": self._model, "prompt": t}, self._count_from_tokenize),
        ]
        for path, body, read in probes:
            try:
                read(self._request("POST", path, root=True, retries=0, json=body("probe")).json())
            except (ModelServerError, KeyError, TypeError, ValueError):
                continue

            def count(text: str, path: str = path, body=body, read=read) -> int:
                return read(self._request("POST", path, root=True, json=body(text)).json())

            return count
        log.warning("%s has no tokenize endpoint; estimating token counts (set llm.tokenizer_path)", self.base_url)
        return estimate_tokens

    @staticmethod
    def _count_from_tokenize(reply: dict) -> int:
        if isinstance(reply.get("count"), int):  # vLLM
            return int(reply["count"])
        return len(reply["tokens"])  # llama.cpp server

    def count_tokens(self, text: str) -> int:
        """Counted as it will be sent: neutralised, so a special-token string counts as the text it becomes."""
        if self._counter is None:
            self._counter = lru_cache(maxsize=256)(self._server_counter())
        return self._counter(self.neutralise(text))

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _url(self, path: str, root: bool = False) -> str:
        base = re.sub(r"/v1$", "", self.base_url) if root else self.base_url
        return base + path

    def _request(self, method: str, path: str, root: bool = False, retries: int | None = None, **kw: Any):
        url = self._url(path, root)
        error: ModelServerError | None = None
        for attempt in range(self._max_retries + 1 if retries is None else retries + 1):
            if attempt:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, url, **kw)
            except httpx.TransportError as exc:
                error = self._transport_error(exc)
                continue
            if response.status_code in _RETRYABLE_STATUS:
                error = self._status_error(response)
                continue
            if response.status_code >= 400:
                raise self._status_error(response)
            return response
        assert error is not None
        raise error

    def _transport_error(self, exc: httpx.TransportError) -> ModelServerError:
        if isinstance(exc, httpx.TimeoutException):
            return ModelServerError(
                f"the model server at {self.base_url} sent nothing for {self._timeout_s:g} s ({type(exc).__name__})",
                "check that it is not overloaded, or raise llm.timeout_s (KB_LLM__TIMEOUT_S)",
            )
        return ModelServerError(
            f"cannot reach the model server at {self.base_url} ({type(exc).__name__}: {exc})",
            "start the server (e.g. `python -m llama_cpp.server --model MODEL.gguf`), or fix llm.base_url "
            "(KB_LLM__BASE_URL); it must end in /v1",
        )

    def _status_error(self, response: httpx.Response) -> ModelServerError:
        try:
            response.read()
            detail = response.text[:300]
        except httpx.HTTPError:
            detail = ""
        hint = {
            401: "set llm.api_key (KB_LLM__API_KEY) to the server's key",
            403: "set llm.api_key (KB_LLM__API_KEY) to a key this server accepts",
            404: f"check llm.base_url (it must end in /v1) and llm.model (GET {self.base_url}/models lists them)",
        }.get(response.status_code, "see the model server's log")
        return ModelServerError(f"the model server answered {response.status_code}: {detail}", hint)

    # -- chat ------------------------------------------------------------------------------------------------

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
        body = {
            "model": self.model_name(),
            "messages": self.neutralise.messages(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        url = self._url("/chat/completions")
        error: ModelServerError | None = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                with self._client.stream("POST", url, json=body) as response:
                    if response.status_code in _RETRYABLE_STATUS:
                        error = self._status_error(response)
                        continue
                    if response.status_code >= 400:
                        raise self._status_error(response)
                    yield from self._events(response)
                    return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: safe to try again
                error = self._transport_error(exc)
            except httpx.TransportError as exc:  # sent, then no answer in time or the connection dropped
                raise self._transport_error(exc) from exc
        assert error is not None
        raise error

    def reply_start_logprobs(self, messages: list[Message], choices: Sequence[Sequence[str]]) -> list[float]:
        """Asks for one token with its ``top_logprobs``; spellings the server does not list count as impossible."""
        body = {
            "model": self.model_name(),
            "messages": self.neutralise.messages(messages),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
        }
        try:
            reply = self._request("POST", "/chat/completions", json=body).json()
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
        except ModelServerError as exc:
            message = f"{exc.message} (kb asked for log-probabilities)"
            raise LogprobsUnavailableError(message, _NO_LOGPROBS_HINT) from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LogprobsUnavailableError(
                "the model server returned no log-probabilities for the reply", _NO_LOGPROBS_HINT
            ) from exc
        return match_top_logprobs(pairs, choices)

    def reply_logprob(self, messages: list[Message], reply: str) -> float:
        """The chat API cannot score a given reply; ``scores_replies`` says so, so the rerank stage never asks."""
        raise ModelServerError(
            "an OpenAI-compatible server cannot score a given reply",
            "set rerank.model_passages to {} with the openai backend",
        )

    def _events(self, response: httpx.Response) -> Iterator[str]:
        """Text deltas from a server-sent-event stream; a stream cut short is an error, not a short answer."""
        finished = False
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ModelServerError(f"the model server reported an error: {event['error']}", "see its log")
                for choice in event.get("choices") or []:
                    if text := (choice.get("delta") or {}).get("content"):
                        yield text
                    finished = finished or bool(choice.get("finish_reason"))
        except httpx.TimeoutException as exc:
            raise self._transport_error(exc) from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ModelServerError(
                f"the model server at {self.base_url} broke off in the middle of the answer ({type(exc).__name__})",
                "it may have crashed or been stopped: check that it is running, then ask again",
            ) from exc
        except json.JSONDecodeError as exc:
            raise ModelServerError(
                f"the model server sent something that is not an OpenAI stream event: {exc}",
                "check that llm.base_url points at an OpenAI-compatible /v1 endpoint",
            ) from exc
        if not finished:
            raise ModelServerError(
                f"the model server at {self.base_url} closed the answer before it was finished",
                "it may have crashed or been stopped: check that it is running, then ask again",
            )

    def close(self) -> None:
        self._client.close()
