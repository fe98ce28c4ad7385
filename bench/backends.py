"""kb's model backends side by side on the same prompts: load time, time to first token, decoding speed, memory.

    .venv/bin/python bench/backends.py                       # 3 rounds, 128 new tokens
    .venv/bin/python bench/backends.py --runs 5 --max-tokens 64 --only raw,llama_cpp

Rows, all on the default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF) and the same RAG-style prompts:
- raw:        llama_cpp.Llama.create_chat_completion on the GGUF, what kb's llama_cpp backend is measured against;
- llama_cpp:  kb's llama_cpp backend (settings: backend llama_cpp);
- openai:     kb's openai backend talking to ``python -m llama_cpp.server`` serving the same GGUF on 127.0.0.1;
- hf_fp32 / hf_int8: kb's transformers backend on the same weights, dequantized from the GGUF into a Hugging Face
  checkpoint once (cached under bench/results/), unquantized and with int8 dynamic quantization.

Every measurement runs in a fresh process, so each peak resident memory (ru_maxrss) is that backend's alone (for
``openai`` the server process holds the model; its peak is reported beside the client's), and rows are
interleaved round by round so that they share the machine's conditions; "vs raw" is the median of the per-round
ratios. Each round uses different passages, since llama.cpp reuses a prompt prefix it has already evaluated.
Tokens are counted with the model's tokenizer on the finished text, the same way for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kb_app.chat.prompt import PromptBuilder  # noqa: E402
from kb_app.models.base import Message  # noqa: E402
from kb_app.models.factory import build_chat_model, resolve_gguf  # noqa: E402
from kb_app.settings import LlmSettings, load_settings  # noqa: E402

DOCS = ROOT.parent / "shared" / "eval" / "zh_docs"
RESULTS = ROOT / "bench" / "results"
QUESTION = "请根据已知信息，概括这些资料分别介绍了什么。"
ROWS = ["raw", "llama_cpp", "openai", "hf_fp32", "hf_int8"]
N_CTX = 2048

Stream = Callable[[list[Message], int, float], Iterator[str]]


def passages() -> Iterator[tuple[str, str]]:
    if DOCS.is_dir():
        for path in sorted(DOCS.glob("*.txt")):
            for para in path.read_text(encoding="utf-8").split("\n\n")[1:]:
                if len(para.strip()) > 80:
                    yield path.name, para.strip()[:400]
    for i in range(10_000):
        yield f"filler-{i}.txt", f"第{i}段：本段是用于测量速度的填充文字，内容没有实际意义。" * 8


def build_prompts(runs: int, per_prompt: int = 2) -> list[list[Message]]:
    """``runs`` distinct RAG prompts of about 600 tokens, built by kb's own prompt templates."""
    t = PromptBuilder(load_settings().prompts_dir).templates("zh")
    source = passages()
    prompts = []
    for _ in range(runs):
        items = [
            t.context_item.format(n=n, source=name, page="", text=text)
            for n, (name, text) in enumerate((next(source) for _ in range(per_prompt)), 1)
        ]
        user = t.user.format(context="\n\n".join(items), question=QUESTION)
        prompts.append([{"role": "system", "content": t.system}, {"role": "user", "content": user}])
    return prompts


def time_runs(stream: Stream, count: Callable[[str], int], prompts: list[list[Message]], max_tokens: int) -> dict:
    """Median time to first token and decoding speed over the prompts (the first run also warms up)."""
    ttft, speed, tokens = [], [], []
    for messages in prompts:
        start = time.perf_counter()
        first = None
        pieces = []
        for piece in stream(messages, max_tokens, 0.0):
            first = first or time.perf_counter()
            pieces.append(piece)
        end = time.perf_counter()
        n = count("".join(pieces))
        ttft.append((first or end) - start)
        speed.append((n - 1) / (end - first) if first and n > 1 and end > first else 0.0)
        tokens.append(n)
    return {
        "ttft_s": statistics.median(ttft),
        "tok_s": statistics.median(speed),
        "tokens": statistics.median(tokens),
        "prompt_tokens": statistics.median(count(m[0]["content"]) + count(m[1]["content"]) for m in prompts),
    }


def hf_checkpoint(gguf_path: Path) -> Path:
    """The GGUF's weights, dequantized to a Hugging Face Qwen2 checkpoint (once; cached in bench/results/)."""
    target = RESULTS / "qwen2.5-coder-0.5b-from-gguf-hf"
    if (target / "model.safetensors").exists():
        return target
    import gguf
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    reader = gguf.GGUFReader(str(gguf_path))

    def field(key: str):
        return reader.fields[key].contents()

    n_layers = int(field("qwen2.block_count"))
    config = Qwen2Config(
        vocab_size=int(reader.tensors[0].shape[1]),
        hidden_size=int(field("qwen2.embedding_length")),
        intermediate_size=int(field("qwen2.feed_forward_length")),
        num_hidden_layers=n_layers,
        num_attention_heads=int(field("qwen2.attention.head_count")),
        num_key_value_heads=int(field("qwen2.attention.head_count_kv")),
        max_position_embeddings=int(field("qwen2.context_length")),
        rope_theta=float(field("qwen2.rope.freq_base")),
        rms_norm_eps=float(field("qwen2.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=False,
    )
    tensors = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    model = Qwen2ForCausalLM(config)
    state = {}
    for key in model.state_dict():
        tensor = tensors[names.get_name(key, try_suffixes=(".weight", ".bias"))]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        state[key] = torch.from_numpy(array.reshape(model.state_dict()[key].shape).copy())
    model.load_state_dict(state)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, 151643], do_sample=False)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(row: str, run: int, max_tokens: int) -> dict:
    """One backend, one run (prompt number ``run``), measured in a fresh process."""
    settings = load_settings()
    gguf_path = resolve_gguf(LlmSettings(), settings.cache_dir)
    prompts = build_prompts(run + 1)[run:]
    threads = settings.llm.n_threads or os.cpu_count() or 2
    extra: dict = {}
    start = time.perf_counter()
    if row == "raw":
        from llama_cpp import Llama

        llm = Llama(model_path=str(gguf_path), n_ctx=N_CTX, n_threads=threads, use_mmap=False, verbose=False)
        load_s = time.perf_counter() - start

        def stream(messages: list[Message], max_tokens: int, temperature: float) -> Iterator[str]:
            for part in llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            ):
                if text := part["choices"][0].get("delta", {}).get("content"):
                    yield text

        def count(text: str) -> int:
            return len(llm.tokenize(text.encode(), add_bos=False, special=True))

        return {"load_s": load_s, **time_runs(stream, count, prompts, max_tokens), "rss_mb": peak_rss_mb()}
    if row == "openai":
        port = free_port()
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1"),
                *("--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", str(threads), "--verbose", "False"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx
            import psutil

            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
                if server.poll() is not None or time.perf_counter() - start > 120:
                    raise RuntimeError("llama_cpp.server did not start")
            load_s = time.perf_counter() - start
            peak = [0.0]
            done = threading.Event()

            def sample() -> None:
                proc = psutil.Process(server.pid)
                while not done.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
                    time.sleep(0.05)

            threading.Thread(target=sample, daemon=True).start()
            llm_settings = LlmSettings(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", n_ctx=N_CTX)
            model = build_chat_model(llm_settings, settings.cache_dir)
            result = time_runs(model.stream, model.count_tokens, prompts, max_tokens)
            done.set()
            extra = {"server_rss_mb": peak[0]}
            return {"load_s": load_s, **result, "rss_mb": peak_rss_mb(), **extra}
        finally:
            server.kill()
            server.wait(timeout=30)
    if row == "llama_cpp":
        llm_settings = LlmSettings(n_ctx=N_CTX, n_threads=threads)
    else:
        checkpoint = hf_checkpoint(gguf_path)
        start = time.perf_counter()  # the one-time conversion is not load time
        llm_settings = LlmSettings(
            backend="transformers",
            hf_path=str(checkpoint),
            n_ctx=N_CTX,
            n_threads=threads,
            device="cpu",
            quantization="int8" if row == "hf_int8" else "none",
        )
    model = build_chat_model(llm_settings, settings.cache_dir)
    load_s = time.perf_counter() - start
    return {
        "load_s": load_s,
        **time_runs(model.stream, model.count_tokens, prompts, max_tokens),
        "rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows from {ROWS}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.run, args.max_tokens)))
        return
    rows = [r for r in args.only.split(",") if r]
    if any(r.startswith("hf_") for r in rows):
        print("... preparing the transformers checkpoint (once)", file=sys.stderr, flush=True)
        hf_checkpoint(resolve_gguf(LlmSettings(), load_settings().cache_dir))
    # Rounds of every row, one fresh process each: on a shared machine the load drifts, and interleaving makes
    # the rows of a round see the same conditions; ratios are taken within a round.
    samples: dict[str, list[dict]] = {row: [] for row in rows}
    for run in range(args.runs):
        for row in rows:
            print(f"... round {run + 1}/{args.runs}: {row}", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child", row, "--run", str(run), "--max-tokens", str(args.max_tokens)],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if done.returncode != 0:
                print(f"{row} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            samples[row].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(row: str, key: str) -> float:
        return statistics.median(r[key] for r in samples[row])

    def ratio(row: str) -> str:
        pairs = [r["tok_s"] / raw["tok_s"] for r, raw in zip(samples[row], samples.get("raw", []), strict=False)]
        return f"{statistics.median(pairs):.2f}x" if pairs and "raw" in samples else "-"

    print(f"\n{args.runs} rounds, {args.max_tokens} new tokens max, n_ctx {N_CTX}, {os.cpu_count()} CPU threads")
    print("| backend | load s | prompt tokens | first token s | decode tok/s | vs raw llama.cpp | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in (r for r in rows if samples[r]):
        rss = f"{max(r['rss_mb'] for r in samples[row]):.0f}"
        if "server_rss_mb" in samples[row][0]:
            rss += f" + server {max(r['server_rss_mb'] for r in samples[row]):.0f}"
        print(
            f"| {row} | {median(row, 'load_s'):.1f} | {median(row, 'prompt_tokens'):.0f} | "
            f"{median(row, 'ttft_s'):.2f} | {median(row, 'tok_s'):.1f} | {ratio(row)} | {rss} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backends.json").write_text(json.dumps(samples, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
