"""Every invalid or unsupported setting fails at start-up, before any request, naming the setting."""

import json
import subprocess
import sys

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.adapter import cli, hooks
from sgl_layered.core.config import LayeredConfig, LayeredConfigError


def _engine(model_path, **kw):
    return sgl_layered.Engine(model_path=model_path, enable_layered_prefill=True, **{**cpu.engine_kwargs(), **kw})


@pytest.mark.parametrize("kwargs,message", [
    ({"layered_prefill_groups": 0}, "layered-prefill-groups must be >= 1"),
    ({"layered_prefill_groups": "many"}, "layered-prefill-groups must be a positive integer or 'auto'"),
    ({"layered_prefill_groups": 6}, "exceeds the model's 5 layers"),
    ({"layered_prefill_group_tokens": 0}, "layered-prefill-group-tokens must be a positive integer"),
    ({"enable_mixed_chunk": True}, "--enable-mixed-chunk"),
    ({"chunked_prefill_size": 512}, "--chunked-prefill-size"),
    ({"pp_size": 2}, "pipeline parallelism"),
    ({"speculative_algorithm": "EAGLE"}, "speculative decoding"),
    ({"disaggregation_mode": "prefill"}, "PD disaggregation"),
    ({"enable_dp_attention": True}, "data-parallel attention"),
    ({"dp_size": 2}, "data parallelism"),
    ({"ep_size": 2}, "expert parallelism"),
    ({"enable_two_batch_overlap": True}, "two-batch-overlap"),
    ({"enable_torch_compile": True}, "torch-compile"),
    ({"enable_lora": True}, "LoRA"),
    ({"attention_backend": "flex_attention"}, "--attention-backend other than torch_native, triton, flashinfer, fa3"),
    ({"decode_attention_backend": "flashmla"}, "--decode-attention-backend other than"),
])
def test_engine_rejects(kwargs, message, model_path):
    with pytest.raises(LayeredConfigError, match=message):
        _engine(model_path("tiny-qwen3-moe"), **kwargs)


def test_knobs_without_the_feature_are_rejected(model_path):
    with pytest.raises(LayeredConfigError, match="no effect without --enable-layered-prefill"):
        sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), layered_prefill_groups=3, **cpu.engine_kwargs())


@pytest.mark.parametrize("arch,model_type,reason", [
    ("GptOssForCausalLM", "gpt_oss", "sinks"),
    ("Gemma2ForCausalLM", "gemma2", "supported: "),
])
def test_unsupported_architecture_is_named(tmp_path, arch, model_type, reason):
    config = {"architectures": [arch], "model_type": model_type, "hidden_size": 64, "head_dim": 16,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayeredConfigError, match=f"does not support model architecture '{arch}' yet.*{reason}"):
        _engine(str(tmp_path))


def test_other_sglang_version_is_refused(model_path, monkeypatch):
    import sglang

    monkeypatch.setattr(sglang, "__version__", "0.5.99")
    with pytest.raises(LayeredConfigError, match="requires SGLang 0.5.23 exactly.*found SGLang 0.5.99"):
        _engine(model_path("tiny-qwen3-moe"))


def test_cli_rejects_before_spawning(model_path):
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path("tiny-mixtral"),
           *cpu.server_args(), "--enable-layered-prefill", "--layered-prefill-groups", "9"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**__import__("os").environ,
                                                                                  **cpu.CPU_ENV})
    assert out.returncode != 0
    assert "--layered-prefill-groups=9 exceeds the model's 5 layers" in out.stderr


def test_unapplied_scheduler_hooks_refuse_to_start():
    # In this test process no SGLang launch applied the scheduler hooks: verification must name them all.
    config = LayeredConfig(enable_layered_prefill=True, layered_prefill_routing="calibrated",
                           layered_prefill_cpu_fast_extend=True)
    with pytest.raises(hooks.HookNotApplied) as err:
        hooks.verify(hooks.SCHEDULER, config)
    for hook in hooks.HOOKS:
        if hook.process == hooks.SCHEDULER:
            assert hook.target in str(err.value)


def test_launcher_refuses_a_scheduler_without_our_hooks():
    config = LayeredConfig(enable_layered_prefill=True)
    with pytest.raises(LayeredConfigError, match="rank 1 started without sgl-layered"):
        cli.check_scheduler_infos([{"sgl_layered": {"layered": True}}, {"status": "ready"}], config)
    with pytest.raises(LayeredConfigError, match="rank 0 started without layered prefill"):
        cli.check_scheduler_infos([{"sgl_layered": {"layered": False}}], config)
