"""Which attention backend a layered launch gets on a GPU, decided before anything loads (simulated platforms: the
resolution SGLang runs in the launching process, with its own platform override, on this CPU-only machine).

SGLang picks a backend per platform when --attention-backend is unset: fa3 on Hopper (MHA and MLA), trtllm_mha /
flashinfer on Blackwell, flashinfer or triton elsewhere; a model override may force one (DeepSeek-V3 on Blackwell:
trtllm_mla). Layered prefill keeps SGLang's choice where it serves it, substitutes a served backend where SGLang's
default is not served (with a log line), and refuses before loading what it cannot serve (with the flag to pass).
"""

from __future__ import annotations

import logging

import pytest

from sgl_layered.adapter import settings
from sgl_layered.core.config import LayeredConfig, LayeredConfigError

H200 = dict(is_cuda=True, is_hopper_with_cuda_12_3=True, is_sm90=True, is_sm100=False, is_sm100_or_sm110=False,
            is_sm120=False, is_blackwell=False, is_hip=False, has_flashinfer=True, device_sm=90,
            device_capability=(9, 0))
B200 = dict(H200, is_hopper_with_cuda_12_3=False, is_sm90=False, is_sm100=True, is_sm100_or_sm110=True,
            is_blackwell=True, device_sm=100, device_capability=(10, 0))
LAYERED = LayeredConfig(enable_layered_prefill=True)


def _resolve(model, platform, config=LAYERED, **flags):
    """The attention backend ServerArgs resolves to for `model` on a simulated `platform`, our hooks applied."""
    from sglang.srt.arg_groups.model_override_base import attention_backends_of, resolved_view
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import override_platform
    from sglang.srt.server_args import ServerArgs

    load_plugins()  # what launch_server and Engine do first: our launcher hooks are registered and applied
    args = ServerArgs(model_path=model, device="cuda", skip_tokenizer_init=True, max_total_tokens=4096,
                      **(settings.forced_server_settings() if config.enable_layered_prefill else {}), **flags)
    with settings.launch_env(config), override_platform(**platform):
        args.resolve_once()
    prefill, decode = attention_backends_of(resolved_view(args))
    assert prefill == decode
    return prefill


@pytest.fixture(scope="module")
def models(model_path):
    return {name: model_path(name) for name in ("tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-deepseek-v3")}


def test_hopper_default_fa3_is_served_for_moe_models(models):
    assert _resolve(models["tiny-qwen3-moe"], H200, config=LayeredConfig()) == "fa3"  # SGLang's own choice
    assert _resolve(models["tiny-qwen3-moe"], H200) == "fa3"  # kept under layered prefill


def test_unserved_defaults_are_replaced_before_loading_with_a_log_line(models, caplog):
    with caplog.at_level(logging.WARNING, logger="sgl_layered"):
        assert _resolve(models["tiny-deepseek-v2"], H200, config=LayeredConfig()) == "fa3"  # stock: MLA on fa3
        assert _resolve(models["tiny-deepseek-v2"], H200) == "triton"
        assert _resolve(models["tiny-qwen3-moe"], B200, config=LayeredConfig()) == "trtllm_mha"
        assert _resolve(models["tiny-qwen3-moe"], B200) == "flashinfer"
    replaced = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
    assert len(replaced) == 2 and "fa3" in replaced[0] and "trtllm_mha" in replaced[1]


def test_unserved_choices_are_refused_before_loading_naming_the_flag(models):
    # DeepSeek-V3 on Blackwell: SGLang's model override forces trtllm_mla, not its default rule.
    with pytest.raises(LayeredConfigError, match="MLA models .* --attention-backend triton"):
        _resolve(models["tiny-deepseek-v3"], B200)
    with pytest.raises(LayeredConfigError, match="MLA models .* resolved 'flashinfer'"):
        _resolve(models["tiny-deepseek-v2"], H200, attention_backend="flashinfer")
    with pytest.raises(LayeredConfigError, match="one forward with one attention backend"):
        _resolve(models["tiny-qwen3-moe"], H200, prefill_attention_backend="flashinfer")
    assert _resolve(models["tiny-deepseek-v2"], H200, attention_backend="triton") == "triton"


def test_fa3_prompt_and_decode_metadata_are_planned_per_instance(monkeypatch):
    """fa3's metadata path on this CPU (its kernels need a GPU): the cohort's prompt rows get their own backend
    instance, planned before the forward from the cohort's extend batch (cached prefix included); the decode
    instance, planned afterwards from the decode batch, leaves the prompt instance's plan intact."""
    from types import SimpleNamespace

    import sgl_kernel
    import torch

    def merge_state_v2(*args, **kwargs):  # imported by the module; a kernel this metadata test never calls
        raise NotImplementedError("fa3's state merge needs sgl-kernel on a GPU")

    monkeypatch.setitem(vars(sgl_kernel), "merge_state_v2", merge_state_v2)
    from sglang.srt.layers.attention.flashattention_backend import FlashAttentionBackend
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    req_to_token = torch.arange(4 * 64, dtype=torch.int32).reshape(4, 64)

    def instance():  # the attributes its metadata path reads (its __init__ needs a CUDA device)
        b = object.__new__(FlashAttentionBackend)
        b.req_to_token_pool = SimpleNamespace(req_to_token=req_to_token)
        b.req_to_token, b.max_context_len, b.topk, b.page_size, b.device = req_to_token, 64, 0, 1, "cpu"
        b.kv_index_translator = SimpleNamespace(is_translating=False)
        b.use_sliding_window_kv_pool = b.is_prefill_aware_swa = False
        b.local_attn_builder = None
        b.use_mla, b._get_scheduler_metadata = False, None  # fa3's decode split heuristic is a GPU kernel: not run
        return b

    def batch(mode, pools, prefix, new):
        seq = [p + n for p, n in zip(prefix, new)]
        return SimpleNamespace(forward_mode=mode, batch_size=len(seq), seq_lens=torch.tensor(seq),
                               seq_lens_cpu=torch.tensor(seq), req_pool_indices=torch.tensor(pools),
                               extend_prefix_lens_cpu=prefix, extend_seq_lens=torch.tensor(new),
                               extend_seq_lens_cpu=new, encoder_lens=None, spec_info=None)

    prompt, decode = instance(), instance()
    prompt.init_forward_metadata(batch(ForwardMode.EXTEND, [1, 3], prefix=[0, 5], new=[7, 4]))
    plan = prompt.forward_metadata
    decode.init_forward_metadata(batch(ForwardMode.DECODE, [0, 2], prefix=[20, 9], new=[1, 1]))
    assert prompt.forward_metadata is plan
    assert plan.cu_seqlens_q.tolist() == [0, 7, 11] and plan.cu_seqlens_k.tolist() == [0, 7, 16]
    assert plan.page_table[1, :9].tolist() == req_to_token[3, :9].tolist()  # prefix + new tokens of request 3
    assert decode.forward_metadata.cu_seqlens_q.tolist() == [0, 1, 2]
    assert decode.forward_metadata.cu_seqlens_k.tolist() == [0, 21, 31]
