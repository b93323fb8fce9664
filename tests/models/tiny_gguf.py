"""A tiny Llama GGUF file with Q8_0-quantised tensors and a byte-level BPE tokenizer (256 bytes, a
few merges, ChatML special tokens), written with the ``gguf`` package: it loads in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_gguf(path: Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 128) -> Path:
    import gguf

    tokens, merges = _byte_level_vocab()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def mat(name, rows, cols, quant=True):
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if quant:
            w.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, data)

    def vec(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    head_dim = hidden // heads
    mat("token_embd.weight", vocab, hidden)
    for i in range(layers):
        vec(f"blk.{i}.attn_norm.weight", hidden)
        mat(f"blk.{i}.attn_q.weight", hidden, hidden)
        mat(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        mat(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        mat(f"blk.{i}.attn_output.weight", hidden, hidden)
        vec(f"blk.{i}.ffn_norm.weight", hidden)
        mat(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        mat(f"blk.{i}.ffn_up.weight", ffn, hidden)
        mat(f"blk.{i}.ffn_down.weight", hidden, ffn, quant=True)
    vec("output_norm.weight", hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    """GPT-2's byte-to-unicode alphabet, a few merges (and their products), then special tokens."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    alphabet = [chr(c) for c in chars]
    merges = ["t h", "th e", "\u0120 t", "i n", "a n", "e r", "o n"]
    tokens = alphabet + [m.replace(" ", "") for m in merges]
    return tokens + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], merges
