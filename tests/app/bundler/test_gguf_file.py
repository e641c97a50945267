"""The GGUF reader and its block decoders, against the format written out by hand, the real file's
known facts, the `gguf` package, and an element-by-element decoder written from ggml's block layouts."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from support_assistant.bundler.gguf_file import GGML_F32, GGML_Q4_1, GGML_Q8_0, GGUFError, GGUFFile


def _half(raw: bytes) -> float:
    return struct.unpack("<e", raw)[0]


def spec_q4_1_block(block: bytes) -> list[float]:
    """block_q4_1 (ggml-common.h): ggml_half d, ggml_half m, uint8 qs[16]; element j is the low
    nibble of qs[j], element j+16 its high nibble; value = code * d + m (float32 arithmetic)."""
    assert len(block) == 20
    d, m = np.float32(_half(block[0:2])), np.float32(_half(block[2:4]))
    out = [0.0] * 32
    for j, byte in enumerate(block[4:]):
        out[j] = float(np.float32(byte & 0x0F) * d + m)
        out[j + 16] = float(np.float32(byte >> 4) * d + m)
    return out


def spec_q8_0_block(block: bytes) -> list[float]:
    """block_q8_0: ggml_half d, int8 qs[32]; value = code * d."""
    assert len(block) == 34
    d = np.float32(_half(block[0:2]))
    return [float(np.float32(q) * d) for q in struct.unpack("<32b", block[2:])]


# ---- a file written by hand -------------------------------------------------------------------

def _gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, tensors: list[tuple[str, tuple[int, ...], int, bytes]], alignment: int = 32) -> None:
    """A GGUF v3 file: two metadata fields and the given (name, numpy shape, type, data) tensors."""
    kv = (_gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
          + _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2)
          + _gguf_string("a") + _gguf_string("b"))
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 2) + kv
    offset, infos, blobs = 0, b"", b""
    for name, shape, ggml_type, data in tensors:
        dims = tuple(reversed(shape))
        infos += _gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", ggml_type, offset)
        padded = data + b"\0" * (-len(data) % alignment)
        blobs += padded
        offset += len(padded)
    head = header + infos
    path.write_bytes(head + b"\0" * (-len(head) % alignment) + blobs)


def _q4_1_bytes(d: float, m: float, codes: list[int]) -> bytes:
    qs = bytes((codes[j] & 0xF) | (codes[j + 16] << 4) for j in range(16))
    return struct.pack("<ee", d, m) + qs


def test_hand_written_file_reads_back(tmp_path: Path) -> None:
    floats = np.arange(64, dtype=np.float32).reshape(2, 32) / 7
    codes = [(7 * j) % 16 for j in range(32)]
    q8 = list(range(-16, 16))
    path = tmp_path / "tiny.gguf"
    write_gguf(path, [
        ("f", (2, 32), GGML_F32, floats.tobytes()),
        ("q4", (1, 32), GGML_Q4_1, _q4_1_bytes(0.5, -2.0, codes)),
        ("q8", (1, 32), GGML_Q8_0, struct.pack("<e", 0.25) + struct.pack("<32b", *q8)),
    ])
    f = GGUFFile(path)
    assert f.metadata == {"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "b"]}
    assert f.tensor("f").shape == (2, 32)
    np.testing.assert_array_equal(f.dequantize("f"), floats)
    np.testing.assert_array_equal(f.dequantize("q4")[0], np.array(codes, np.float32) * 0.5 - 2.0)
    np.testing.assert_array_equal(f.dequantize("q8")[0], np.array(q8, np.float32) * 0.25)
    d, m, q = f.blocks_q4_1("q4")
    assert (d.item(), m.item(), q[0, 0].tolist()) == (0.5, -2.0, codes)
    with pytest.raises(GGUFError, match="q8 is Q8_0, not Q4_1"):
        f.blocks_q4_1("q8")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"GGML" + raw[4:], "not a GGUF file"),
    (lambda raw: raw[:4] + struct.pack("<I", 2) + raw[8:], "GGUF version 2 is not supported"),
    (lambda raw: raw[:40], "truncated"),
    (lambda raw: raw[:-40], "runs past the end of the file"),
])
def test_damaged_files_are_refused_by_name(tmp_path: Path, damage, message: str) -> None:
    good = tmp_path / "good.gguf"
    write_gguf(good, [("f", (2, 32), GGML_F32, np.ones((2, 32), np.float32).tobytes())])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(GGUFError, match=message) as err:
        GGUFFile(bad)
    assert str(bad) in str(err.value)


# ---- the real file ----------------------------------------------------------------------------

def test_real_file_is_smollm2_135m(gguf_file: GGUFFile) -> None:
    md = gguf_file.metadata
    assert gguf_file.version == 3 and len(gguf_file.tensors) == 272
    assert (md["general.architecture"], md["llama.block_count"], md["llama.embedding_length"],
            md["llama.feed_forward_length"], md["llama.attention.head_count"],
            md["llama.attention.head_count_kv"]) == ("llama", 30, 576, 1536, 9, 3)
    assert md["llama.rope.freq_base"] == 100000.0 and abs(md["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-9
    assert "output.weight" not in gguf_file.tensors  # tied embeddings
    types = {t.type_name for n, t in gguf_file.tensors.items() if n.endswith(("attn_q.weight", "ffn_down.weight"))}
    assert types == {"Q4_1"} and gguf_file.tensor("token_embd.weight").type_name == "Q8_0"
    assert gguf_file.tensor("token_embd.weight").shape == (49152, 576)


def _sample_rows(rows: int) -> list[int]:
    return sorted({0, 1, rows // 2, rows - 1})


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                                  "blk.29.attn_k.weight", "blk.17.ffn_gate.weight"])
def test_block_decoding_matches_the_format_spec(gguf_file: GGUFFile, name: str) -> None:
    info = gguf_file.tensor(name)
    raw = gguf_file.raw(name)
    ours = gguf_file.dequantize(name)
    spec = spec_q8_0_block if info.ggml_type == GGML_Q8_0 else spec_q4_1_block
    block_bytes = 34 if info.ggml_type == GGML_Q8_0 else 20
    for row in _sample_rows(info.shape[0]):
        data = bytes(raw[row])
        expected = [v for b in range(0, len(data), block_bytes) for v in spec(data[b:b + block_bytes])]
        np.testing.assert_array_equal(ours[row], np.array(expected, np.float32), err_msg=f"{name} row {row}")


def test_every_tensor_matches_the_gguf_package(gguf_path: Path, gguf_file: GGUFFile) -> None:
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(gguf_path))
    assert {t.name for t in reader.tensors} == set(gguf_file.tensors)
    for t in reader.tensors:
        np.testing.assert_array_equal(gguf_file.dequantize(t.name), quants.dequantize(t.data, t.tensor_type),
                                      err_msg=t.name)
