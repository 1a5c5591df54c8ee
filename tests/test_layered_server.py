"""End to end through `python -m sglang.launch_server --enable-layered-prefill`: the CLI flags, exact greedy
tokens over HTTP with overlapping requests, streaming, and the OpenAI-compatible endpoints."""

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sgl_layered.core.partition import paper_group_count
from sgl_layered.models import get_preset
from server import Server
from trace_checks import check_layered_schedule, read
from workload import LOGPROB_PROMPT, MAX_NEW_TOKENS, greedy, prompts


def test_launch_server_help_lists_our_flags():
    out = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--help"], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--enable-layered-prefill", "--layered-prefill-groups", "--layered-prefill-group-tokens",
                 "--layered-prefill-trace"):
        assert flag in out.stdout


def _generate(url, ids, delay):
    time.sleep(delay)
    r = requests.post(url + "/generate", json={"input_ids": ids, "sampling_params": greedy()}, timeout=300)
    r.raise_for_status()
    return r.json()["output_ids"]


@pytest.mark.engine
@pytest.mark.parametrize("model,groups", [("tiny-qwen3-moe", "3"), ("tiny-mixtral", "auto")])
def test_server_matches_stock(model, groups, model_path, stock_reference, tmp_path):
    reference = stock_reference(model)
    trace = tmp_path / "trace.jsonl"
    args = ["--enable-layered-prefill", "--layered-prefill-groups", groups, "--layered-prefill-trace", str(trace)]
    with Server(model_path(model), args, log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(max_workers=len(prompts())) as pool:
            futures = [pool.submit(_generate, server.url, ids, 0.05 * i) for i, ids in enumerate(prompts())]
            outputs = [f.result() for f in futures]

        # Streaming yields the same tokens, growing chunk by chunk. SGLang's tokenizer manager sends the newest
        # state when several outputs arrived before the stream was read, so chunks may be fewer than tokens.
        ids = prompts()[5]
        r = requests.post(server.url + "/generate", stream=True, timeout=300,
                          json={"input_ids": ids, "sampling_params": greedy(), "stream": True})
        chunks = [json.loads(line[len(b"data: "):]) for line in r.iter_lines()
                  if line.startswith(b"data: ") and line != b"data: [DONE]"]
        assert 1 < len(chunks) <= MAX_NEW_TOKENS
        for before, after in zip(chunks, chunks[1:]):
            assert after["output_ids"][:len(before["output_ids"])] == before["output_ids"]
            assert len(after["output_ids"]) > len(before["output_ids"])
        assert chunks[-1]["output_ids"] == reference["outputs"][5]

        # Stop conditions: a stop token ends the request where stock SGLang's output has it.
        want = reference["outputs"][7]
        stop_at = 6
        r = requests.post(server.url + "/generate", timeout=300, json={"input_ids": prompts()[7], "sampling_params": {
            "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "stop_token_ids": [want[stop_at]]}}).json()
        first = want.index(want[stop_at])
        assert r["output_ids"] == want[:first + 1]
        assert r["meta_info"]["finish_reason"]["type"] == "stop"

        # Logprobs of the prompt and of the sampled tokens come from the cohort's own logits.
        r = requests.post(server.url + "/generate", timeout=300, json={
            "input_ids": LOGPROB_PROMPT, "sampling_params": greedy(8), "return_logprob": True,
            "logprob_start_len": 0, "top_logprobs_num": 2}).json()["meta_info"]
        _assert_logprobs_close(r, reference["logprobs"])

        # OpenAI-compatible endpoints.
        r = requests.post(server.url + "/v1/completions", timeout=300, json={
            "model": "m", "prompt": "the layer of the expert", "max_tokens": 12, "temperature": 0}).json()
        assert r["choices"][0]["text"] == reference["completion"]
        assert r["usage"]["completion_tokens"] == 12
        r = requests.post(server.url + "/v1/chat/completions", timeout=300, json={
            "model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5, "temperature": 0}).json()
        assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5
        assert isinstance(r["choices"][0]["message"]["content"], str)
        requests.get(server.url + "/get_server_info", timeout=60)  # drain: see workload.drain

    mismatched = [i for i, (a, b) in enumerate(zip(outputs, reference["outputs"])) if a != b]
    assert not mismatched, f"prompts {mismatched} differ from stock SGLang"
    num_layers = get_preset(model).num_layers

    def expected(tokens):
        return paper_group_count(tokens, num_layers) if groups == "auto" else int(groups)

    assert check_layered_schedule(read(trace), num_layers, expected) >= 5


def _assert_logprobs_close(got, want, tol=1e-4):
    for key in ("input_token_logprobs", "output_token_logprobs"):
        assert len(got[key]) == len(want[key]) > 0, key
        for (lp_a, tok_a, *_), (lp_b, tok_b, *_) in zip(got[key], want[key]):
            assert tok_a == tok_b
            assert (lp_a is None and lp_b is None) or abs(lp_a - lp_b) < tol, (key, lp_a, lp_b)
    assert [[t for _, t, *_ in top] for top in got["output_top_logprobs"]] == \
        [[t for _, t, *_ in top] for top in want["output_top_logprobs"]]


@pytest.mark.engine
def test_grammar_requests_are_answered_while_a_cohort_is_in_flight(model_path, tmp_path):
    """Structured output under layered prefill: requests wait in SGLang's grammar queue, which SGLang polls only
    inside its admission. With a long cohort mid-layers (admission closed under the paper's rule) a valid regex is
    answered within a few iterations and an invalid one gets SGLang's 400 at once, not after the cohort."""
    args = ["--enable-layered-prefill", "--layered-prefill-groups", "5"]
    with Server(model_path("tiny-qwen3-moe"), args, log_path=tmp_path / "server.log") as server:
        def post(body):
            start = time.time()
            r = requests.post(server.url + "/generate", json=body, timeout=60)
            return r, time.time() - start

        with ThreadPoolExecutor(max_workers=3) as pool:
            decoding = pool.submit(post, {"input_ids": prompts()[3], "sampling_params": greedy(200)})
            time.sleep(0.3)
            cohort = pool.submit(post, {"input_ids": prompts()[17], "sampling_params": greedy(4)})
            time.sleep(0.05)
            bad, bad_s = post({"text": "the layer", "sampling_params": {"max_new_tokens": 8, "regex": "[a-z"}})
            good, good_s = post({"text": "the layer", "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                                          "regex": "[a-z]+"}})
            assert decoding.result()[0].ok and cohort.result()[0].ok
    assert bad.status_code == 400 and "Failed to compile regex grammar" in bad.text, bad.text
    print(f"invalid grammar answered in {bad_s:.2f} s, valid in {good_s:.2f} s")
    assert bad_s < 1.0, f"an invalid grammar waited {bad_s:.2f} s"
    assert good.ok and re.fullmatch("[a-z]+", good.json()["text"]), good.text
    assert good_s < 10.0
