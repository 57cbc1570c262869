"""Read a fusedopt checkpoint with Python's own safetensors and check it.

    python3 checkpoint_python.py FILE EXPECTED

Independent of the library: opens FILE with safetensors.numpy, checks the
documented names, dtypes and shapes (the model of tests/ckpt_harness.h),
that parameter "fc1.weight" element 7 equals EXPECTED (a float.hex
string), recomputes every tensor's CRC-32 and the metadata's CRC-32 with
zlib, and parses every hexadecimal float with float.fromhex.  Exits 0 when
everything holds.  Run by test_checkpoint.c when safetensors is installed.
"""
import json
import struct
import sys
import zlib

import numpy as np
from safetensors import safe_open


def bf16_to_f32(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def check(path, expected):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0, "data section not 8-aligned"
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = blob[8 + n :]

    # names, dtypes, shapes
    sizes = {"embed.weight": 1, "tensor.1": 37, "fc1.weight": 1000, "empty": 0,
             "tensor.4": 4099, "fc1.bias": 20000}
    for name, numel in sizes.items():
        assert header[name]["dtype"] == "BF16", name
        assert header[name]["shape"] == [numel], name
        for role in ("master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            e = header[f"{name}.{role}"]
            assert e["dtype"] == "F32" and e["shape"] == [numel], (name, role)
    assert len(header) == 6 * 5, sorted(header)

    # every tensor's checksum, and the tiling of the data section
    end = 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, t = e["data_offsets"]
        assert b == end, f"hole or overlap before {name}"
        end = t
        crc = zlib.crc32(data[b:t])
        assert meta[f"fusedopt.crc32.{name}"] == f"{crc:08x}", name
    assert end == len(data)

    # the metadata's own checksum: fusedopt.* keys in order, key NUL value NUL
    crc = 0
    for k in sorted(k for k in meta if k.startswith("fusedopt.")):
        if k != "fusedopt.metadata_crc32":
            crc = zlib.crc32(k.encode() + b"\0" + meta[k].encode() + b"\0", crc)
    assert meta["fusedopt.metadata_crc32"] == f"{crc:08x}"

    # floats are exact hexadecimal
    assert float.fromhex(meta["fusedopt.group.1.lr"]) == float(np.float32(0.0191))
    assert float.fromhex(meta["fusedopt.state.scale"]) == 2048.0  # grew after 3 clean steps
    assert meta["fusedopt.algorithm"] == "adamw" and meta["fusedopt.state.step"] == "3"

    # safetensors itself agrees on the layout and the values
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == meta
        keys = set(f.keys())
        assert keys == set(header), keys ^ set(header)
        master = f.get_tensor("fc1.weight.master")
        assert master.dtype == np.float32 and master.shape == (1000,)
    b, _ = header["fc1.weight"]["data_offsets"]
    raw = np.frombuffer(data[b : b + 2000], dtype=np.uint16)
    got = float(bf16_to_f32(raw)[7])
    want = float.fromhex(expected)
    assert got == want, (got, want)
    # with master weights the parameter is the master rounded to bf16
    m = master.view(np.uint32)
    rne = ((m + 0x7FFF + ((m >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(rne, raw), "parameter != RNE(master)"
    print("python: safetensors reads the checkpoint; checksums and values hold")
    return 0


if __name__ == "__main__":
    sys.exit(check(sys.argv[1], sys.argv[2]))
