"""The benchmark machinery (the figures themselves are in bench/*.md and the docs, not asserted), and the progress bar."""

from __future__ import annotations

import io

import pytest

from helpers import run_cli

from cam_infer.tools.bench import measure_in_subprocess
from cam_infer.progress import Progress


def test_measure_reports_ratios_floor_and_its_own_peak_memory(tiny_bundle):
    row = measure_in_subprocess(tiny_bundle.path, "onnxruntime", "score", {"top_k": 4}, repeats=2)
    assert row["method"] > 0 and row["forward"] > 0 and row["floor"] > 0 and row["floor_passes"] == 4
    # peak of the child process alone: a fresh interpreter with the runtimes, not this test process
    assert 50 < row["peak_mb"] < 2000


def test_measure_times_a_model_that_takes_pixels_over_255(tmp_path):
    """bench timed standard-normal batches, which a model preprocessed as x/255 (mean 0, std 1) never gets and the
    explainer now refuses; it times random pixels through the bundle's own preprocessing."""
    from cam_infer import split_onnx
    from tiny_onnx import tiny_cnn
    bundle = split_onnx(tiny_cnn(), out=tmp_path / "b", preprocessing={"mean": (0, 0, 0), "std": (1, 1, 1)})
    row = measure_in_subprocess(bundle.path, "onnxruntime", "eigen", {}, repeats=1)
    assert row["method"] > 0 and row["forward"] > 0


@pytest.mark.slow
def test_bench_command_prints_a_markdown_table(tiny_bundle):
    result = run_cli("bench", tiny_bundle.path, "--backend", "openvino", "--method", "eigen,recipro (head passes)",
                     "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| openvino")]
    assert [r.split("|")[2].strip() for r in rows] == ["eigen", "recipro (head passes)"]
    bad = run_cli("bench", tiny_bundle.path, "--method", "smoothgrad")
    assert bad.returncode == 1 and "unknown benchmark case 'smoothgrad'" in bad.stderr
    bad = run_cli("bench", tiny_bundle.path, "--method", "eigen+sharpen")
    assert bad.returncode == 1 and "unknown enhancer 'sharpen'" in bad.stderr
    # bf16 with the bundle's runtimes: ONNX Runtime (float32 only) left out, said so, before the table (it stopped
    # in the middle of the table on ONNX Runtime's refusal, OpenVINO never timed)
    result = run_cli("bench", tiny_bundle.path, "--method", "eigen", "--repeats", "1", "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "onnxruntime left out: its CPU provider computes in float32, not bf16"
    assert [line.split("|")[1].strip()[:23] for line in lines if line.startswith("| ")][1:] == \
        ["openvino CPU (latency, "]                      # what OpenVINO computes in, as it reports it


@pytest.mark.slow
def test_an_enhanced_case_is_timed_against_the_passes_its_enhancer_makes(tiny_bundle):
    from cam_infer.enhancers.sess import passes
    row = measure_in_subprocess(tiny_bundle.path, "onnxruntime", "recipro", {}, repeats=2,
                                enhance={"name": "sess", "options": {"scales": 3}})
    assert passes(64, 64, scales=3) == 1 + 9 and passes(64, 64, scales=3, pre_filter=0.5) == 1 + 9 + 5
    assert row["floor_passes"] == 1 + 9                    # the input and its 9 windows, timed as one batch
    assert row["floor"] > 0 and abs(row["ratio_to_floor"] - row["method"] / row["floor"]) < 1e-9
    result = run_cli("bench", tiny_bundle.path, "--backend", "onnxruntime", "--method", "eigen+evet", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "| eigen+evet |" in result.stdout and "× its" in result.stdout


def test_progress_bar_counts_and_estimates():
    stream = io.StringIO()
    with Progress(4, "explain", stream=stream, enabled=True) as bar:
        bar.advance(2)
        bar.advance(2)
    text = stream.getvalue()
    assert "explain [" in text and "4/4" in text and "ETA 00:00" in text and text.endswith("\n")
    silent = io.StringIO()
    with Progress(4, "explain", stream=silent, enabled=False) as bar:
        bar.advance(4)
    assert silent.getvalue() == ""


def test_a_shared_bench_page_keeps_the_other_scripts_sections(tmp_path):
    from cam_infer.tools.bench import write_section
    page = tmp_path / "audit.md"
    write_section(page, None, "Table of metrics\n| a |")
    write_section(page, "## Cost of ROAD", "## Cost of ROAD\n\nslow")
    write_section(page, "## Sanity", "## Sanity\n\nflags")
    write_section(page, "## Cost of ROAD", "## Cost of ROAD\n\nfaster")             # replaced where it was
    write_section(page, None, "New table\n| b |")
    assert page.read_text() == "New table\n| b |\n\n## Cost of ROAD\n\nfaster\n\n## Sanity\n\nflags\n"
