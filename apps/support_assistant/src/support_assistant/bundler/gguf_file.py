"""Read a GGUF file (llama.cpp's model format, version 3): metadata, tensor table and the raw
block-quantized tensor data, plus the block decoders for the types the local generator uses.

Written from the format's specification (ggml's docs/gguf.md and the block layouts in
ggml-common.h) rather than taken from the `gguf` package, because the converter needs the raw
blocks (scales, mins and 4-bit codes) to keep the weights 4-bit in ONNX, not only dequantized floats.
The tests check these decoders against the `gguf` package and against a per-element decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (3,)
DEFAULT_ALIGNMENT = 32

# ggml_type ids (ggml.h) of the types read here.
GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
TYPE_NAMES = {GGML_F32: "F32", GGML_F16: "F16", GGML_Q4_1: "Q4_1", GGML_Q8_0: "Q8_0"}
QK = 32  # elements per block for Q4_1 and Q8_0
# Bytes per block: Q4_1 = fp16 d, fp16 m, 16 bytes of 4-bit codes; Q8_0 = fp16 d, 32 int8 codes.
BLOCK_BYTES = {GGML_Q4_1: 4 + QK // 2, GGML_Q8_0: 2 + QK}

# GGUF metadata value types.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF file this reader supports; the message names the file and the field."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    # numpy order: rows first (GGUF lists dimensions fastest-first; this is that list reversed).
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.ggml_type, f"type{self.ggml_type}")

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_bytes(self) -> int:
        if self.ggml_type == GGML_F32:
            return 4 * self.n_elements
        if self.ggml_type == GGML_F16:
            return 2 * self.n_elements
        return self.n_elements // QK * BLOCK_BYTES[self.ggml_type]


class _Cursor:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise GGUFError(f"{self.path}: truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise GGUFError(f"{self.path}: truncated string at byte {self.pos}")
        raw = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.take("<I"), self.take("<Q")
            if itype in _SCALARS and itype != 7:
                fmt = _SCALARS[itype]
                size = struct.calcsize(fmt)
                arr = np.frombuffer(self.data, dtype=np.dtype(fmt), count=n, offset=self.pos)
                self.pos += size * n
                return arr.tolist()
            return [self.value(itype) for _ in range(n)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")


class GGUFFile:
    """A GGUF file mapped read-only: `metadata` (key -> value) and `tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: file not found")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._map), self.path)
        if bytes(self._map[:4]) != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {bytes(self._map[:4])!r})")
        cur.pos = 4
        self.version = cur.take("<I")
        if self.version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.path}: GGUF version {self.version} is not supported (only 3)")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
            infos.append((name, tuple(reversed(dims)), cur.take("<I"), cur.take("<Q")))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-cur.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, rel in infos:
            info = TensorInfo(name, shape, ggml_type, data_start + rel)
            if ggml_type not in TYPE_NAMES:
                raise GGUFError(f"{self.path}: tensor {name} has ggml type {ggml_type}, which this reader "
                                "does not decode (F32, F16, Q4_1, Q8_0)")
            if ggml_type in BLOCK_BYTES and shape[-1] % QK:
                raise GGUFError(f"{self.path}: tensor {name} rows ({shape[-1]}) are not whole blocks")
            if info.offset + info.n_bytes > len(self._map):
                raise GGUFError(f"{self.path}: tensor {name} runs past the end of the file")
            self.tensors[name] = info

    def field(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: metadata field {key!r} is missing")
        return self.metadata[key]

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, bytes per row] (a view into the mapped file)."""
        info = self.tensor(name)
        rows = info.n_elements // info.shape[-1]
        return self._map[info.offset:info.offset + info.n_bytes].reshape(rows, -1)

    def blocks_q4_1(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Q4_1 blocks of a 2-D tensor: d, m as float32 [rows, blocks] and codes uint8
        [rows, blocks, 32] in element order; element = d * code + m."""
        return split_q4_1(self._typed_raw(name, GGML_Q4_1))

    def blocks_q8_0(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Q8_0 blocks of a 2-D tensor: d as float32 [rows, blocks] and codes int8 [rows, blocks, 32];
        element = d * code."""
        return split_q8_0(self._typed_raw(name, GGML_Q8_0))

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in numpy shape."""
        info = self.tensor(name)
        raw = self.raw(name)
        if info.ggml_type == GGML_F32:
            out = raw.view(np.float32)
        elif info.ggml_type == GGML_F16:
            out = raw.view(np.float16).astype(np.float32)
        elif info.ggml_type == GGML_Q4_1:
            d, m, q = split_q4_1(raw)
            out = q * d[..., None] + m[..., None]
        else:
            d, q = split_q8_0(raw)
            out = q * d[..., None]
        return np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)

    def _typed_raw(self, name: str, ggml_type: int) -> np.ndarray:
        info = self.tensor(name)
        if info.ggml_type != ggml_type:
            raise GGUFError(f"{self.path}: tensor {name} is {info.type_name}, not {TYPE_NAMES[ggml_type]}")
        return self.raw(name)


def split_q4_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """block_q4_1 {ggml_half d; ggml_half m; uint8_t qs[16];}: byte j holds element j in its low
    nibble and element j + 16 in its high nibble."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, BLOCK_BYTES[GGML_Q4_1])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return d, m, codes


def split_q8_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """block_q8_0 {ggml_half d; int8_t qs[32];}."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, BLOCK_BYTES[GGML_Q8_0])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = blocks[..., 2:].copy().view(np.int8)
    return d, codes
