"""In-process GGUF models through llama-cpp-python; the chat template comes from the GGUF's own metadata.

GLM GGUFs (llama.cpp's ``chatglm`` and ``glm4`` architectures) get special care: when the GGUF carries no
template or one that does not render a GLM conversation, kb's ChatGLM3 / GLM-4 template is used instead of
llama-cpp-python's llama-2 fallback, and generation also stops on ``<|user|>`` / ``<|observation|>``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from kb_app.models.base import Capabilities, Message
from kb_app.models.choices import choice_logprobs, first_token_ids, mean_token_logprob
from kb_app.models.errors import ModelGenerationError, ModelLoadError, ModelNotFoundError
from kb_app.models.gguf_info import read_gguf_info
from kb_app.models.glm_templates import GLM_STOP_TOKENS, choose_template, compiles, glm_family
from kb_app.models.special_tokens import Neutraliser, gguf_special_tokens

_PATCH_LOCK = threading.Lock()
EVAL_BLOCK = 64  # tokens per batch when kb scores a prompt; 64 to 512 measured alike in speed on 2 cores


@contextmanager
def _template_compile_errors_tolerated() -> Iterator[None]:
    """Let llama-cpp-python load a GGUF whose chat template does not compile.

    ``Llama()`` compiles the GGUF's template while loading and dies on a syntax error, so such a file could not
    be used at all; kb replaces the template right after loading, so the compile error is harmless.
    """
    from jinja2 import TemplateSyntaxError
    from llama_cpp import llama_chat_format

    original = llama_chat_format.Jinja2ChatFormatter.__init__

    def tolerant(self, template: str, *args, **kwargs) -> None:
        try:
            original(self, template, *args, **kwargs)
        except TemplateSyntaxError:
            original(self, "", *args, **kwargs)

    with _PATCH_LOCK:
        llama_chat_format.Jinja2ChatFormatter.__init__ = tolerant  # type: ignore[method-assign]
        try:
            yield
        finally:
            llama_chat_format.Jinja2ChatFormatter.__init__ = original  # type: ignore[method-assign]


def context_window(n_ctx: int, trained: int | None) -> int:
    """The ``n_ctx`` to ask llama.cpp for: ``llm.n_ctx`` (0: the model's own), never past the trained window
    (a model degrades beyond it), rounded down to a multiple of 256.

    llama.cpp pads the context it allocates to a multiple of 256 while llama-cpp-python sizes its token buffer
    by the number asked for; asking for anything else makes the two disagree and a prompt that fits the
    reported window overflow the buffer.
    """
    window = min(n_ctx, trained) if n_ctx and trained else n_ctx or trained or 4096
    return window if window < 256 else window - window % 256


class LlamaCppModel:
    """A GGUF file loaded once; generation is serialised because a llama.cpp context is not thread-safe.

    Special-token strings of the GGUF's vocabulary are neutralised in message content (``special_tokens``).
    """

    scores_replies = True
    reads_first_token_logprobs = True

    @staticmethod
    def declared(chat_format: str | None) -> Capabilities:
        """Token probabilities need kb's own rendering of the prompt, which ``llm.chat_format`` hands to llama.cpp."""
        own_prompt = chat_format is None
        return Capabilities(scores_replies=own_prompt, reads_first_token_logprobs=own_prompt)

    def __init__(
        self,
        gguf_path: Path,
        n_ctx: int,
        n_threads: int | None = None,
        chat_format: str | None = None,
        chat_template: str | None = None,
        use_mmap: bool = False,
        flash_attn: bool = True,
    ) -> None:
        if not gguf_path.is_file():
            raise ModelNotFoundError(
                f"model file {gguf_path} does not exist",
                "set llm.gguf_path (kb.yaml) or KB_LLM__GGUF_PATH to a local .gguf file, "
                "or unset it to use the bundled default",
            )
        info = read_gguf_info(gguf_path)
        window = context_window(n_ctx, info.context_length)
        broken = info.chat_template is not None and not compiles(info.chat_template)
        if broken and chat_format is None and chat_template is None and glm_family(info.architecture) is None:
            raise ModelLoadError(
                f"the chat template stored in {gguf_path.name} is not valid Jinja",
                "set llm.chat_template to a working template, or llm.chat_format to a llama.cpp format name",
            )
        from llama_cpp import Llama

        try:
            with _template_compile_errors_tolerated() if broken else nullcontext():
                self._llm = Llama(
                    model_path=str(gguf_path),
                    n_ctx=window,
                    n_threads=n_threads or os.cpu_count() or 2,
                    chat_format=chat_format,
                    use_mmap=use_mmap,
                    flash_attn=flash_attn,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python reports every load failure as ValueError
            raise ModelLoadError(
                f"llama.cpp could not load {gguf_path} (architecture {info.architecture}, {info.file_type}): {exc}",
                "check that the file is complete and that this llama-cpp-python knows its architecture",
            ) from exc
        self.name = str(self._llm.metadata.get("general.name") or gguf_path.stem)
        self.path = gguf_path
        self.info = info
        # llama-cpp-python keeps its token buffer at the size asked for, whatever llama.cpp allocated
        self.context_length = min(self._llm.n_ctx(), len(self._llm.input_ids))
        self.template_source = f"chat_format {chat_format}" if chat_format else "model"
        capabilities = self.declared(chat_format)
        self.scores_replies = capabilities.scores_replies
        self.reads_first_token_logprobs = capabilities.reads_first_token_logprobs
        self.neutralise = Neutraliser(gguf_special_tokens(self._llm))
        self._formatter = None
        if chat_format is None:
            self._install_template(chat_template)
        self._lock = threading.Lock()
        self._blocks: list[int] = []  # the tokens kb evaluated in whole blocks (see _evaluate)

    def _install_template(self, override: str | None) -> None:
        """Use kb's GLM template (or the configured one) where the GGUF's own is missing or broken, else the GGUF's."""
        family = glm_family(self.info.architecture, self.info.tokenizer_model)
        template, self.template_source = choose_template(override, family, self.info.chat_template)
        template = template or self.info.chat_template  # the model's own, formatted by kb so prompt() can show it
        if template is None:
            return
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        stop_ids = {self._llm.token_eos()}
        if family is not None:
            stop_ids |= {t for t in (self._special_id(s) for s in GLM_STOP_TOKENS) if t is not None}
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=sorted(t for t in stop_ids if t != -1),
        )
        self._llm.chat_handler = self._formatter.to_chat_handler()

    def prompt(self, messages: list[Message]) -> str | None:
        """The exact prompt text kb's template makes of ``messages``; None when llama-cpp-python formats it."""
        if self._formatter is None:
            return None
        return self._formatter(messages=self.neutralise.messages(messages)).prompt  # type: ignore[arg-type]

    def _special_id(self, text: str) -> int | None:
        """The id of a special token, or None if the vocabulary does not have it as one token."""
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def count_tokens(self, text: str) -> int:
        """Counted as it will be evaluated: neutralised, so a special-token string counts as the text it becomes."""
        return len(self._encode_plain(self.neutralise(text)))

    def stream(self, messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
        with self._lock:
            try:
                for part in self._llm.create_chat_completion(
                    messages=self.neutralise.messages(messages),  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                ):
                    delta = part["choices"][0].get("delta", {})  # type: ignore[index]
                    if text := delta.get("content"):
                        yield text
            except ValueError as exc:  # e.g. the prompt does not fit the context window
                raise ModelGenerationError(
                    f"llama.cpp could not answer: {exc}", "shorten the question or raise llm.n_ctx"
                ) from exc

    def reply_start_logprobs(self, messages: list[Message], choices: Sequence[Sequence[str]]) -> list[float]:
        """Evaluates the prompt once and reads the last position's logits (no ``logits_all`` needed).

        The prompt's tokens stay in the context, so the answer after it (same system message, passages and
        question) evaluates only its last lines.
        """
        import llama_cpp

        tokens = self._prompt_tokens(messages)
        groups = [first_token_ids(words, self._encode_plain) for words in choices]
        with self._lock:
            self._evaluate(tokens)
            pointer = llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
            logits = np.ctypeslib.as_array(pointer, shape=(self._llm.n_vocab(),)).copy()
        return choice_logprobs(logits, groups)

    def reply_logprob(self, messages: list[Message], reply: str) -> float:
        """Evaluates the prompt, then the reply in one batch that returns logits for each of its positions."""
        import llama_cpp

        head = self._prompt_tokens(messages)
        tail = self._encode_plain(self.neutralise(reply))
        window = head[-1:] + tail[:-1]  # position i predicts tail[i]
        if not tail or len(head) + len(tail) >= self.context_length or len(window) > self._llm.n_batch:
            raise ModelGenerationError(
                f"cannot score a reply of {len(tail)} tokens after a prompt of {len(head)}",
                "raise llm.n_ctx, or shorten the passages (splitter.chunk_size)",
            )
        with self._lock:
            self._evaluate(head[:-1])
            n_past = self._llm.n_tokens
            self._llm._batch.set_batch(batch=window, n_past=n_past, logits_all=True)
            self._llm._ctx.decode(self._llm._batch)
            self._llm.input_ids[n_past : n_past + len(window)] = window
            self._llm.n_tokens += len(window)
            shape = (len(window), self._llm.n_vocab())
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._llm._ctx.ctx), shape=shape).copy()
        return mean_token_logprob(logits, tail)

    def _evaluate(self, tokens: list[int]) -> None:
        """Evaluate ``tokens``, reusing what the context already holds of them, as llama-cpp-python's own generation
        does: the system message (and a question's passages, between the judge and the answer) are read once.

        llama.cpp's numbers depend on how a prompt is split into batches (0.05 in a log-probability, measured), and
        a refusal must not depend on the question asked before it. So tokens are evaluated in blocks that start at
        multiples of ``EVAL_BLOCK``, and only whole blocks that kb itself evaluated and the context still holds
        are reused: each block is then always computed alike. The block with the last token is always evaluated,
        since its logits are what the caller reads."""
        llm = self._llm
        held = _common_length(tokens[:-1], self._blocks)
        held = _common_length(tokens[:held], llm.input_ids[: llm.n_tokens])
        llm.n_tokens = held - held % EVAL_BLOCK
        for start in range(llm.n_tokens, len(tokens), EVAL_BLOCK):
            llm.eval(tokens[start : start + EVAL_BLOCK])
        self._blocks = tokens[: len(tokens) - len(tokens) % EVAL_BLOCK]

    def _prompt_tokens(self, messages: list[Message]) -> list[int]:
        """The prompt as kb's template writes it, tokenized like llama-cpp-python's chat handler does."""
        prompt = self.prompt(messages)
        if prompt is None:
            raise ModelGenerationError(
                "kb cannot read token probabilities when llm.chat_format hands prompt formatting to llama.cpp",
                "set llm.chat_template instead of llm.chat_format, or refusal.check: similarity",
            )
        # the template already wrote any BOS the model wants
        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) >= self.context_length:
            raise ModelGenerationError(
                f"a prompt of {len(tokens)} tokens does not fit the window of {self.context_length}",
                "raise llm.n_ctx or lower retrieval.top_k",
            )
        return tokens

    def _encode_plain(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    same = np.asarray(a[:n], dtype=np.int64) == np.asarray(b[:n], dtype=np.int64)
    return n if bool(same.all()) else int(same.argmin())
