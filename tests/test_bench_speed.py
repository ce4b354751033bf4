"""bench/speed.py's machine description: CPU model and the ISA that bounds the bf16 speed-up."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.speed import cpu_description  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: fpu sse2 avx2 {flags}

processor\t: 1
model name\t: {model}
flags\t\t: fpu sse2 avx2 {flags}
"""


def test_cpu_description_names_the_model_and_amx(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(vendor="GenuineIntel", model="Intel Xeon Platinum 8480+",
                                   flags="avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"))
    assert cpu_description(str(path)) == (
        "Intel Xeon Platinum 8480+ (avx512f avx512_bf16 amx_bf16 amx_tile; AMX yes)")
    path.write_text(CPUINFO.format(vendor="AuthenticAMD", model="AMD EPYC 9R14",
                                   flags="avx512f avx512_bf16"))
    assert cpu_description(str(path)) == "AMD EPYC 9R14 (avx512f avx512_bf16; AMX no)"
    path.write_text(CPUINFO.format(vendor="x", model="Old CPU", flags=""))
    assert cpu_description(str(path)) == "Old CPU (no AVX-512; AMX no)"
    assert cpu_description(str(tmp_path / "missing")) == "?"
