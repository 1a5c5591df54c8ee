"""A byte-level BPE tokenizer trained locally on a seeded synthetic corpus.

Every token must decode, on its own, to visible text. SGLang's load generator starts TTFT at the first
non-empty streamed text, and SGLang's incremental detokenizer withholds text that ends in an incomplete
UTF-8 sequence; a token that is a lone byte of a multi-byte character (or a control byte, or a special
token that `skip_special_tokens` removes) would stream as nothing and corrupt TTFT and token-gap numbers.
So the base alphabet is printable ASCII plus newline, and the chat markers are ordinary added tokens
(not "special"), which decode to their own text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ALPHABET_BYTES = [b for b in range(0x20, 0x7F)] + [0x0A]


def _byte_level_char(b: int) -> str:
    """The printable stand-in character the GPT-2 byte-level scheme uses for byte `b`."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if b in printable:
        return chr(b)
    extra = [x for x in range(256) if x not in printable]
    return chr(256 + extra.index(b))


def synthetic_corpus(seed: int, n_lines: int = 20000) -> list[str]:
    """English-ish lines from a seeded syllable grammar: deterministic, ASCII only, varied enough to merge."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "st", "tr", "pl", "ch", "sh", "th", "gr", "br"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io", "ai"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
    words = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                     for _ in range(rng.choice([1, 1, 2, 2, 3]))) for _ in range(3000)]
    words += ["the", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as", "on", "layer",
              "expert", "token", "prefill", "decode", "model", "def", "return", "import", "self"]
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like word frequencies
    punct = [".", ",", "!", "?", ":", ";"]
    lines = []
    for _ in range(n_lines):
        n = rng.randint(3, 18)
        ws = rng.choices(words, weights=weights, k=n)
        if rng.random() < 0.3:
            ws[0] = ws[0].capitalize()
        if rng.random() < 0.15:
            ws.append(str(rng.randint(0, 9999)))
        if rng.random() < 0.1:
            ws = [f"{w}({rng.choice(words)})" if i == 0 else w for i, w in enumerate(ws)]
        lines.append(" ".join(ws) + rng.choice(punct))
    return lines


def train_tokenizer(vocab_size: int, seed: int, out_dir: Path, corpus=None) -> None:
    """Train the tokenizer on `corpus` (an iterable of texts; default: the seeded synthetic corpus) into `out_dir`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = [_byte_level_char(b) for b in _ALPHABET_BYTES]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(CHAT_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(synthetic_corpus(seed) if corpus is None else corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained vocabulary has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def invisible_tokens(tokenizer_dir: Path) -> list[int]:
    """Ids whose lone decoding is empty, whitespace-only-control or not valid text (should be none)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    bad = []
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i], skip_special_tokens=True)
        if not text or "\ufffd" in text or any(ord(c) < 0x20 and c != "\n" for c in text):
            bad.append(i)
    return bad
