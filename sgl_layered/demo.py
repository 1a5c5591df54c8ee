"""The main job: build the embedded MoE model, start SGLang with layered prefill, and show it answering.

    python -m sgl_layered.demo [--model tiny-qwen3-moe] [--groups auto]

Requests arrive staggered so that later prompts are prefilled layer group by layer group while earlier
ones decode; the per-iteration trace is summarised at the end to show exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time

from sgl_layered import cpu
from sgl_layered.models import DEFAULT_MODEL, PRESETS, build, get_preset

QUESTIONS = [
    "What does layered prefill change?",
    "Why do mixture-of-experts models reload expert weights per chunk?",
    "Explain time to first token.",
    "the layer of the expert " * 110,  # a longer prompt: more tokens, more layer groups under 'auto'
]


def summarize_trace(path: str) -> list:
    rows = [json.loads(line) for line in open(path)]
    lines, decode_only = [], 0
    for r in rows:
        if not r["prefill"]:
            decode_only += 1
            continue
        pieces = ", ".join(f"cohort {p.get('cohort', '-')}: {p['tokens']} tok, layers {p['layers'][0]}-"
                           f"{p['layers'][1] - 1}{' (samples)' if p.get('final') else ''}" for p in r["prefill"])
        ms = (r["end"] - r["start"]) * 1e3
        lines.append(f"  iter {r['iter']:3d}  {r['mode']:8s} decode rows {r['decode_rows']:2d}  {ms:6.1f} ms  {pieces}")
    lines.append(f"  ... and {decode_only} decode-only iterations")
    return lines


async def _ask(engine, tokenizer, max_new_tokens):
    async def one(i, question):
        await asyncio.sleep(0.06 * i)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        t0 = time.perf_counter()
        out = await engine.async_generate(prompt=prompt, sampling_params={
            "max_new_tokens": max_new_tokens, "temperature": 0.0})
        return question, out, time.perf_counter() - t0

    return await asyncio.gather(*(one(i, q) for i, q in enumerate(QUESTIONS)))


def _quiet_imports() -> None:
    """SGLang warns at import about quantization kernels and platforms this demo does not use, in this process and
    in each process it spawns: a newcomer should see the answers and the schedule, not that noise."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by SGLang's scheduler and detokenizer
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("sglang").setLevel(logging.ERROR)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m sgl_layered.demo")
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(PRESETS))
    ap.add_argument("--groups", default="auto", help="layer groups per cohort: a number or 'auto'")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    os.environ.update(cpu.machine_env())  # SGLang's CPU engine only where there is no CUDA device
    _quiet_imports()
    import sgl_layered
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    path = build(args.model)
    print(f"embedded model {args.model}: {path} ({time.perf_counter() - t0:.1f} s)")
    trace = os.path.join(tempfile.mkdtemp(prefix="sgl_layered_demo_"), "trace.jsonl")
    t0 = time.perf_counter()
    engine = sgl_layered.Engine(model_path=str(path), enable_layered_prefill=True, layered_prefill_groups=args.groups,
                                layered_prefill_trace=trace, **cpu.machine_engine_kwargs(log_level="error"))
    print(f"SGLang engine with layered prefill (groups={args.groups}) up in {time.perf_counter() - t0:.1f} s")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        answers = engine.loop.run_until_complete(_ask(engine, tokenizer, args.max_new_tokens))
    finally:
        engine.shutdown()
    trained = "train" in get_preset(args.model).extra
    print("\nAnswers (" + ("a tiny model trained on fortune cookies: word-like, not meaningful" if trained else
                          "random weights, so the words are gibberish") + "; the serving path is real):")
    for question, out, seconds in answers:
        meta = out["meta_info"]
        print(f"- {question[:60]!r}: {meta['prompt_tokens']} prompt tokens -> {meta['completion_tokens']} tokens "
              f"in {seconds:.2f} s: {out['text'][:70]!r}")
    print(f"\nPer-iteration trace ({trace}):")
    for line in summarize_trace(trace):
        print(line)


if __name__ == "__main__":
    main()
