"""bench/speed.py's machine description: CPU model and the ISA that bounds the bf16 speed-up."""

from __future__ import annotations

from bench.speed import cpu_description

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


def test_precision_accuracy_trains_both_precisions_on_the_same_steps(tmp_path, capsys):
    from bench import precision_accuracy

    tiny = ["--size", "S", "--filters", "4", "--head-filters", "4", "--patch-size", "64",
            "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2",
            "--data-option", "size=96", "--data-option", "count=6", "--min-size", "10"]
    assert precision_accuracy.main(["--seeds", "0", "--out", str(tmp_path), "--"] + tiny) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line.split() for line in lines if line.split()[0] in ("float32", "mixed_bfloat16")]
    assert [(run[0], run[1], run[2]) for run in runs] == [("float32", "0", "2"),
                                                         ("mixed_bfloat16", "0", "2")]
    assert all(0.0 <= float(run[3]) <= 1.0 for run in runs)
    for precision in ("float32", "mixed_bfloat16"):
        config = (tmp_path / f"{precision}-seed0" / "config.json").read_text()
        assert f'"precision": "{precision}"' in config
    # --model: the float32 run's predictions scored in both precisions (evaluate.py --precision)
    scored = tmp_path / "scored"
    assert precision_accuracy.main(["--model", str(tmp_path / "float32-seed0"), "--split",
                                    "test", "--out", str(scored)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[0] in ("float32", "mixed_bfloat16")]
    assert [row[0] for row in rows] == ["float32", "mixed_bfloat16"]
    assert all(int(row[1]) > 0 and 0.0 <= float(row[2]) <= 1.0 for row in rows)
    for precision in ("float32", "mixed_bfloat16"):
        assert f'"precision": "{precision}"' in (scored / f"eval-{precision}" /
                                                 "metrics.json").read_text()
