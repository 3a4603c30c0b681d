"""Read a TensorFlow (TF1 / TF2 "tensor bundle") checkpoint without TensorFlow.

A checkpoint is `<prefix>.index`, a LevelDB-format sorted table mapping each variable name to a
BundleEntryProto (dtype, shape, shard, offset, size, crc32c), and `<prefix>.data-NNNNN-of-MMMMM`
shards holding the raw little-endian tensor bytes. TensorFlow writes the index uncompressed, so
reading it needs only the table layout and a few protobuf fields, decoded by hand here: musicnn's
weights (a TF1 checkpoint in its wheel) convert to torch with no TensorFlow installed.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}


class CheckpointError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _block_entries(data: bytes, offset: int, size: int):
    block = data[offset : offset + size]
    if data[offset + size] != 0:  # the trailer's compression byte: TF writes kNoCompression
        raise CheckpointError("compressed checkpoint index blocks are not supported")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _handle(value: bytes) -> tuple[int, int]:
    offset, pos = _varint(value, 0)
    size, _ = _varint(value, pos)
    return offset, size


def read_index(index_path: str | Path) -> dict[str, dict]:
    """Variable name -> {dtype, shape, shard, offset, size} from a checkpoint's .index file."""
    data = Path(index_path).read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise CheckpointError(
            f"{index_path} is not a TensorFlow checkpoint index (bad table magic)"
        )
    footer = data[-48:]
    _, pos = _varint(footer, 0)  # metaindex handle: unused
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries: dict[str, dict] = {}
    for _, handle in _block_entries(data, index_offset, index_size):
        for key, value in _block_entries(data, *_handle(handle)):
            if not key:  # the empty key holds the BundleHeaderProto
                continue
            entry = {"dtype": 1, "shape": [], "shard": 0, "offset": 0, "size": 0}
            for number, _, field in _fields(value):
                if number == 1:
                    entry["dtype"] = field
                elif number == 2:
                    for dim_number, _, dim in _fields(field):
                        if dim_number == 2:
                            size = next((v for n, _, v in _fields(dim) if n == 1), 0)
                            entry["shape"].append(size)
                elif number == 3:
                    entry["shard"] = field
                elif number == 4:
                    entry["offset"] = field
                elif number == 5:
                    entry["size"] = field
                elif number == 7:
                    raise CheckpointError(
                        f"{key.decode()}: partitioned (sliced) variables are not supported"
                    )
            entries[key.decode()] = entry
    return entries


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Every variable of the checkpoint at `prefix` (the path without `.index`) as numpy arrays."""
    prefix = str(prefix)
    index = read_index(prefix + ".index")
    shards = 1 + max((e["shard"] for e in index.values()), default=0)
    blobs = {}
    out: dict[str, np.ndarray] = {}
    for name, entry in sorted(index.items()):
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            continue  # strings and resource handles: not weights
        shard = entry["shard"]
        if shard not in blobs:
            blobs[shard] = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}").read_bytes()
        raw = blobs[shard][entry["offset"] : entry["offset"] + entry["size"]]
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise CheckpointError(
                f"{name}: {len(raw)} bytes for shape {entry['shape']} ({np.dtype(dtype).name})"
            )
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(entry["shape"]).copy()
    return out
