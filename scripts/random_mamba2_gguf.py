#!/usr/bin/env python3
"""Writes a random-weight Mamba-2 GGUF (llama.cpp's `mamba2` architecture, F16 weights) of one of
the Bi-Mamba shapes, for speed comparisons with llama.cpp (scripts/bench_vs_llamacpp.sh).

usage: random_mamba2_gguf.py SHAPE OUT.gguf      (SHAPE: 780m, 1.3b or 2.7b; vocab 32000)

The shapes are `bimamba_engine::random::shape_config`'s: d_state 128, headdim 64, ngroups 1,
expand 2, d_conv 4, tied embedding. Tensor shapes follow llama.cpp's Mamba-2 loader (numpy order,
the reverse of ggml's ne). Tensors are written one at a time, so memory stays at one tensor.
Needs numpy and the `gguf` package (llama.cpp's gguf-py).
"""
import sys

import numpy as np
import gguf

SHAPES = {"780m": (1536, 48), "1.3b": (2048, 48), "2.7b": (2560, 64)}
VOCAB, D_STATE, HEADDIM, NGROUPS, EXPAND, D_CONV = 32000, 128, 64, 1, 2, 4


def tensors(d_model, n_layer):
    """(name, numpy shape, kind) for every tensor; kind: 'w' weight, 'one', 'zero', 'a', 'dt'."""
    d_inner = EXPAND * d_model
    nheads = d_inner // HEADDIM
    conv_dim = d_inner + 2 * NGROUPS * D_STATE
    d_in_proj = 2 * d_inner + 2 * NGROUPS * D_STATE + nheads
    out = [("token_embd.weight", (VOCAB, d_model), "w")]
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (d_model,), "one"),
            (b + "ssm_in.weight", (d_in_proj, d_model), "w"),
            (b + "ssm_conv1d.weight", (conv_dim, D_CONV), "w"),
            (b + "ssm_conv1d.bias", (conv_dim,), "zero"),
            (b + "ssm_dt.bias", (nheads,), "dt"),
            (b + "ssm_a", (nheads, 1), "a"),
            (b + "ssm_d", (nheads, 1), "one"),
            (b + "ssm_norm.weight", (NGROUPS, d_inner // NGROUPS), "one"),
            (b + "ssm_out.weight", (d_model, d_inner), "w"),
        ]
    out.append(("output_norm.weight", (d_model,), "one"))
    return out, d_inner, nheads


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(SHAPES)} OUT.gguf")
    shape, path = sys.argv[1], sys.argv[2]
    d_model, n_layer = SHAPES[shape]
    specs, d_inner, nheads = tensors(d_model, n_layer)

    w = gguf.GGUFWriter(path, "mamba2")
    w.add_name(f"random Bi-Mamba {shape} shape")
    w.add_context_length(1 << 20)
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(n_layer)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(D_CONV)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(D_STATE)
    w.add_ssm_time_step_rank(nheads)
    w.add_ssm_group_count(NGROUPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # An SPM vocabulary: <unk> <s> </s>, the 256 byte tokens (llama.cpp looks up <0x0A>), then
    # placeholders up to 32000 entries. llama-bench draws random token ids; nothing is tokenized.
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"t{i}" for i in range(len(toks), VOCAB)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (VOCAB - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def dtype(kind, shp):
        return np.float16 if kind == "w" and len(shp) == 2 and shp[1] % 256 == 0 else np.float32

    for name, shp, kind in specs:
        dt = dtype(kind, shp)
        w.add_tensor_info(name, shp, np.dtype(dt), int(np.prod(shp)) * np.dtype(dt).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for name, shp, kind in specs:
        if kind == "w":
            t = rng.standard_normal(shp, dtype=np.float32) / np.sqrt(shp[-1])
        elif kind == "one":
            t = np.ones(shp, np.float32)
        elif kind == "zero":
            t = np.zeros(shp, np.float32)
        elif kind == "a":  # A = -exp(A_log), A_log ~ log U(1, 16), as Mamba-2 initializes
            t = -rng.uniform(1.0, 16.0, shp).astype(np.float32)
        else:  # dt bias: inverse softplus of dt ~ U(0.001, 0.1)
            dtv = rng.uniform(0.001, 0.1, shp)
            t = (dtv + np.log(-np.expm1(-dtv))).astype(np.float32)
        w.write_tensor_data(t.astype(dtype(kind, shp)))
    w.close()


if __name__ == "__main__":
    main()
