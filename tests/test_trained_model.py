"""The trained checkpoint's machinery (sgl_layered/models/train.py) on a micro model trained for a few seconds: the
loss falls, training is deterministic, the export is build.py's layout and transformers computes the same logits,
the trained router is not degenerate, and build() never trains. The full preset is not trained here."""

import json
import math
from dataclasses import replace

import pytest

from sgl_layered.models import build, get_preset, model_dir
from sgl_layered.models.build import NotTrainedError, _weight_names, hf_config
from sgl_layered.models.presets import ModelPreset
from sgl_layered.models import train as T

RECIPE = {"train_format": T.TRAIN_FORMAT, "corpus": "test", "steps": 60, "batch": 8, "seq_len": 64, "lr": 1e-2,
          "min_lr": 1e-3, "warmup": 5, "weight_decay": 0.1, "aux_coef": 0.01, "clip": 1.0, "chat_fraction": 0.5}
MICRO = ModelPreset("micro-trained", "qwen3_moe", num_layers=2, hidden=64, heads=2, kv_heads=1, head_dim=32,
                    num_experts=8, top_k=2, expert_intermediate=64, vocab_size=512, extra={"train": RECIPE})
HAVE_FORTUNES = T.FORTUNES_DIR.is_dir()


def _docs():
    """A slice of the real corpus where Debian's fortunes is installed, else the synthetic tokenizer corpus."""
    if HAVE_FORTUNES:
        return T.fortunes()[::8]
    from sgl_layered.models.tokenizer import synthetic_corpus

    lines = synthetic_corpus(0, 6000)
    return [("synthetic", "\n".join(lines[i:i + 3])) for i in range(0, len(lines), 3)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a machine shared with other jobs (CI), two OpenMP threads wait on each other for most of
    these small steps."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SGLANG_LAYERED_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        path = T.train(preset=MICRO, docs=_docs(), log=None)
        yield path, json.loads((path / "training.json").read_text())
    finally:
        mp.undo()


def test_loss_decreases(micro):
    _, record = micro
    losses = [h["loss"] for h in record["history"]]
    assert len(losses) == RECIPE["steps"]
    assert losses[0] > math.log(MICRO.vocab_size) - 0.5  # starts near uniform
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.7
    assert record["heldout_loss"] < losses[0] - 0.5  # and generalises to held-out text


def test_training_is_deterministic():
    import torch

    stream = torch.arange(3000) % 97 * 5 % MICRO.vocab_size
    a, _, _ = T.train_model(MICRO, stream, steps=3, log=None)
    b, _, _ = T.train_model(MICRO, stream, steps=3, log=None)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_export_is_build_layout_and_transformers_agrees(micro):
    import torch
    from transformers import AutoModelForCausalLM

    path, _ = micro
    config = json.loads((path / "config.json").read_text())
    assert config == hf_config(MICRO, config["eos_token_id"])
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == {name for name, _, _ in _weight_names(MICRO)}
    assert json.loads((path / "sgl_layered_preset.json").read_text())["extra"]["train"] == RECIPE
    ours = T.load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    _, held = T.split(_docs())
    ids = T.token_stream(path, [t for _, t in held[:20]])[:96].unsqueeze(0)
    with torch.no_grad():
        expected, _ = ours(ids)
        got = hf(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    text = T.generate(ours, path, T.chat_prompt("Tell me something about science."), 12)
    assert isinstance(text, str)


def test_trained_routing_is_not_degenerate(micro):
    path, _ = micro
    model = T.load_model(path)
    _, held = T.split(_docs())
    stream = T.token_stream(path, [t + T.DOC_SEP for _, t in held])[:64 * 16]
    _, ids = T.routing_ids(model, stream, 64)
    for layer in T.load_balance(ids, MICRO.num_experts):
        assert layer["min_share"] > 0 and layer["entropy_ratio"] > 0.75, layer
    u = T.coverage_tables(ids, MICRO.num_experts, (1, 4, 16, 64), trials=8)
    assert u["consecutive"][1] == MICRO.top_k
    assert MICRO.top_k < u["consecutive"][4] < u["consecutive"][16] <= u["consecutive"][64] <= MICRO.num_experts
    assert u["scattered"][64] > MICRO.num_experts - 1


@pytest.mark.skipif(not HAVE_FORTUNES, reason="Debian's fortunes package is not installed")
def test_corpus_and_coverage_report(micro):
    docs = T.fortunes()
    assert len(docs) > 10000
    assert all(set(t) <= set(map(chr, range(0x20, 0x7F))) | {"\n"} for _, t in docs)
    train_docs, held = T.split(docs)
    assert len(held) == math.ceil(len(docs) / T.HELDOUT_EVERY) and len(train_docs) + len(held) == len(docs)
    path, _ = micro
    report = T.coverage_report(path, sizes=(1, 8, 64), window=64, max_windows=8)
    assert set(report["U"]) == {"trained", "calibrated", "calibrated_analytic", "random_weights"}
    for routing in ("trained", "calibrated", "random_weights"):
        assert report["U"][routing]["consecutive"][1] == MICRO.top_k
    # Benchmark prompts for a trained checkpoint: the held-out text through its own tokenizer, decoding back to it.
    ids = T.heldout_ids(path)
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(path / "tokenizer.json")).decode(ids[:400])
    assert len(ids) > 10000 and held[0][1][:40] in text


def test_recipe_is_in_the_cache_path_and_build_never_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_LAYERED_CACHE", str(tmp_path))
    p = get_preset("trained-qwen3-moe")
    longer = replace(p, extra={"train": {**p.extra["train"], "steps": p.extra["train"]["steps"] + 1}})
    assert model_dir(longer) != model_dir(p)
    with pytest.raises(NotTrainedError, match="python -m sgl_layered.models train trained-qwen3-moe"):
        build("trained-qwen3-moe")
    assert not any(tmp_path.rglob("*.safetensors"))
