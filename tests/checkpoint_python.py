"""Read a fusedopt checkpoint with Python's own safetensors and check it.

    python3 checkpoint_python.py FILE EXPECTED
    python3 checkpoint_python.py --shards WHOLE RANKFILE...

Independent of the library.  The first form opens FILE with
safetensors.numpy, checks the documented names, dtypes and shapes (the
model of tests/support/ckpt_harness.h), that parameter "fc1.weight" element 7
equals EXPECTED (a float.hex string), recomputes every tensor's CRC-32 and
the metadata's CRC-32 with zlib, and parses every hexadecimal float with
float.fromhex.  Run by test_checkpoint.c.

The second form takes the per-rank files of a sharded state (any order)
and the gathered checkpoint of the same state: checks every file's
checksums, that the per-rank files are format version 2 and their shards
tile the arena in rank order, that each holds the parameters whole, and
that each state buffer's pieces, concatenated in rank order (each starting
where the metadata says), are the gathered file's whole buffer.  Run by
test_checkpoint_shard_files.c.

Exits 0 when everything holds, when safetensors is installed.
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


def open_checked(path):
    """The header, metadata and data of a file whose checksums all hold."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = blob[8 + n :]
    for name, e in header.items():
        b, t = e["data_offsets"]
        assert meta[f"fusedopt.crc32.{name}"] == f"{zlib.crc32(data[b:t]):08x}", (path, name)
    crc = 0
    for k in sorted(k for k in meta if k.startswith("fusedopt.")):
        if k != "fusedopt.metadata_crc32":
            crc = zlib.crc32(k.encode() + b"\0" + meta[k].encode() + b"\0", crc)
    assert meta["fusedopt.metadata_crc32"] == f"{crc:08x}", path
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == meta and set(f.keys()) == set(header), path
    return header, meta, data


def raw(file, name):
    header, _, data = file
    b, t = header[name]["data_offsets"]
    return data[b:t]


def check_shards(whole_path, paths):
    whole = open_checked(whole_path)
    wh, wm, _ = whole
    assert wm["fusedopt.format_version"] == "1"
    assert not any(k.startswith("fusedopt.shard.") for k in wm)
    files = [open_checked(p) + (p,) for p in paths]
    files.sort(key=lambda f: int(f[1]["fusedopt.shard.rank"]))
    n = len(files)
    total = int(files[0][1]["fusedopt.shard.total"])
    end = 0
    for r, (h, m, _, p) in enumerate(files):
        assert m["fusedopt.format_version"] == "2", p
        assert int(m["fusedopt.shard.rank"]) == r and int(m["fusedopt.shard.size"]) == n, p
        assert int(m["fusedopt.shard.first"]) == end, p
        end += int(m["fusedopt.shard.count"])
        # everything but the shard's own keys is the gathered file's
        own = ("fusedopt.shard.", "fusedopt.crc32.", "fusedopt.format_version",
               "fusedopt.metadata_crc32")
        mine = {k: v for k, v in m.items() if not k.startswith(own)}
        theirs = {k: v for k, v in wm.items() if not k.startswith(own)}
        assert mine == theirs, (p, set(mine.items()) ^ set(theirs.items()))
        for name in h:
            assert name in wh, (p, name)
    assert end == total
    pieces = 0
    with safe_open(whole_path, framework="numpy") as w:
        for name, e in wh.items():
            key = f"fusedopt.shard.offset.{name}"
            holders = [f for f in files if key in f[1]]
            if not holders and all(name in f[0] for f in files):  # parameters, whole
                assert all(raw(f[:3], name) == raw(whole, name) for f in files), name
                continue
            if not holders:  # the state of an empty tensor: no piece anywhere
                assert e["shape"] == [0], name
                continue
            at, parts = 0, []
            for h, m, _, p in holders:  # in rank order
                assert int(m[key]) == at, (p, name, m[key], at)
                with safe_open(p, framework="numpy") as f:
                    parts.append(f.get_tensor(name))
                at += parts[-1].shape[0]
                pieces += 1
            assert [at] == e["shape"], (name, at, e["shape"])
            assert np.array_equal(np.concatenate(parts).view(np.uint32),
                                  w.get_tensor(name).view(np.uint32)), name
    print(f"python: {n} per-rank files ({pieces} pieces) reassemble the gathered checkpoint")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--shards":
        sys.exit(check_shards(sys.argv[2], sys.argv[3:]))
    sys.exit(check(sys.argv[1], sys.argv[2]))
