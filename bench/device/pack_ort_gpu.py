"""Pack onnxruntime-gpu small enough to carry to a lent H100/H200 in few device calls.

The wheel is ~256 MB (a device call carries 64 MiB). 218 MB of it is the CUDA provider's
fat binary: cubins for sm_75, 80, 86, 89, 90 and 120. A Hopper GPU loads only the sm_90
images, so this zeroes the payload of every other cubin (headers kept, so the fat binary's
layout is unchanged) and packs the package folder as tar.xz, split into parts.

    python bench/device/pack_ort_gpu.py --version 1.31.1 --out .ortgpu --keep-arch 90

On the device: `cat .ortgpu/p*/part-* | tar -xJ -C /tmp/ortgpu` (bench/device/install_ort_gpu.sh).
Not for production: a plain `pip install onnxruntime-gpu` is what users get.
"""

from __future__ import annotations

import argparse
import io
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
ELF_KIND = 2
DROP_DIRS = ("onnxruntime/transformers/", "onnxruntime/tools/")


def _section(data: bytes, wanted: str) -> tuple[int, int]:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx][4]
    for name, _typ, _flags, _addr, offset, size in heads:
        end = data.index(b"\0", strtab + name)
        if data[strtab + name : end].decode() == wanted:
            return offset, size
    raise ValueError(f"no {wanted} section")


def strip_fatbin(data: bytearray, keep: set[int]) -> tuple[int, int]:
    """Zero the cubins whose arch is not in `keep`; returns (bytes zeroed, images kept)."""
    off, size = _section(bytes(data), ".nv_fatbin")
    p, end, zeroed, kept = off, off + size, 0, 0
    while p < end:
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:
            p += 8
            continue
        q, fend = p + hsize, p + hsize + fsize
        while q < fend:
            kind, _v, ehsize, psize = struct.unpack_from("<HHIQ", data, q)
            arch = struct.unpack_from("<I", data, q + 28)[0]
            if kind == ELF_KIND and arch not in keep:
                data[q + ehsize : q + ehsize + psize] = bytes(psize)
                zeroed += psize
            else:
                kept += 1
            q += ehsize + psize
        p = fend
    return zeroed, kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.31.1")
    ap.add_argument("--out", default=".ortgpu")
    ap.add_argument("--keep-arch", type=int, nargs="+", default=[90])
    ap.add_argument("--part-mib", type=int, default=56)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
             "-d", tmp, f"onnxruntime-gpu=={args.version}"],
            check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("onnxruntime_gpu-*.whl"))
        buf = io.BytesIO()
        with zipfile.ZipFile(wheel) as zf, tarfile.open(fileobj=buf, mode="w:xz", preset=9) as tf:
            for info in zf.infolist():
                if info.is_dir() or info.filename.startswith(DROP_DIRS):
                    continue
                blob = bytearray(zf.read(info))
                if info.filename.endswith("libonnxruntime_providers_cuda.so"):
                    zeroed, kept = strip_fatbin(blob, set(args.keep_arch))
                    print(f"cuda provider: zeroed {zeroed / 1e6:.0f} MB of cubins, kept {kept}")
                ti = tarfile.TarInfo(info.filename)
                ti.size = len(blob)
                ti.mode = (
                    0o755 if info.filename.endswith(".so") or ".so." in info.filename else 0o644
                )
                tf.addfile(ti, io.BytesIO(bytes(blob)))
    blob = buf.getvalue()
    step = args.part_mib << 20
    for i in range(0, len(blob), step):
        d = out / f"p{i // step:02d}"
        d.mkdir()
        (d / "part").write_bytes(blob[i : i + step])
    print(f"{len(blob) / 2**20:.1f} MiB in {len(list(out.iterdir()))} parts under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
