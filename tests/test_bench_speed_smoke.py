"""The side-by-side speed pass in reduced mode, and the docs taking its numbers (no timing asserts)."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main
from benchmarks.suite import BACKBONES
from benchmarks.suite_report import load_speed, section, with_speed
from benchmarks.tasks import TASKS

TASK = "default-molecules"


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    assert main(["speed", "--reduced", "--tasks", TASK, "--backbones", "reference", "--peers", "e3nn",
                 "--repeats", "2", "--json", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_speed_pass_times_every_model_in_interleaved_rounds(speed_run):
    _, speed = speed_run
    assert speed["reduced"] and speed["repeats"] == 2 and "interleaved" in speed["protocol"]
    record = speed["tasks"][TASK]
    assert set(record["models"]) == {"reference", "e3nn"}
    assert record["edges_per_atom"] > 0 and record["triplets_per_atom"] > 0
    for model in record["models"].values():
        assert len(model["times_s"]) == 2
        assert model["structures_per_s"] > 0 and model["atoms_per_s"] > 0 and model["num_parameters"] > 0
        assert model["structures_per_s"] * model["time_s"] == pytest.approx(record["num_test_structures"])


def test_docs_take_inference_speeds_and_bar_2_from_the_speed_pass(speed_run):
    path, speed = speed_run
    etgnn = {"config": BACKBONES["etgnn"], "relative_error": 0.1, "inference_structures_per_s": 1.0,
             "fields": {f: {"mae": 0.1, "rmse": 0.2, "label_mean_abs": 1.0} for f in TASKS[TASK].targets}}
    e3nn = {"supported": True, "inference_structures_per_s": 100.0,
            "fields": {f: {"mae": 0.1, "rmse": 0.2} for f in TASKS[TASK].targets}}
    task = {"backbones": {"etgnn": etgnn}, "peers": {"e3nn": e3nn}}
    # The speed JSON timed "reference" and "e3nn", not "etgnn": its bar uses the speeds it has.
    speed["tasks"][TASK]["models"]["etgnn"] = {"structures_per_s": 300.0, "atoms_per_s": 1.0}
    speed["tasks"][TASK]["models"]["e3nn"]["structures_per_s"] = 100.0
    updated = with_speed(TASK, task, speed)
    assert updated["backbones"]["etgnn"]["inference_structures_per_s"] == 300.0
    assert updated["bar"]["speed"]["speedup"] == pytest.approx(3.0)
    assert updated["bar"]["speed"]["holds"] and updated["bar"]["speed"]["source"] == "side-by-side speed pass"
    assert task["backbones"]["etgnn"]["inference_structures_per_s"] == 1.0  # the input is not modified
    # A speed JSON of other backbone sizes is not used.
    assert load_speed(path, {"etgnn": {"name": "etgnn", "hidden": 7}}) is None
    assert load_speed(path, {"reference": BACKBONES["reference"]}) is not None
    assert "side by side" in section({"environment": {}, "mode": "full", "backbone_configs": {}, "inference": "x",
                                      "training_throughput": "y", "memory_method": "z", "tasks": {}}, "s.json", speed)


def test_speed_pass_in_bfloat16_records_its_precision_and_is_not_used_for_the_suite_docs(tmp_path):
    """``--precision bf16`` on the CPU: the tensorframe model under its ``backbone_precision``, the
    e3nn peer under ``torch.autocast``; the JSON says so, and the suite's docs (CPU, float32) do not
    take its speeds."""
    out = tmp_path / "speed-bf16.json"
    assert main(["speed", "--reduced", "--tasks", TASK, "--backbones", "reference", "--peers", "e3nn",
                 "--repeats", "1", "--precision", "bf16", "--json", str(out)]) == 0
    speed = json.loads(out.read_text())
    assert speed["precision"] == "bf16" and speed["device"] == "cpu"
    models = speed["tasks"][TASK]["models"]
    assert speed["tasks"][TASK]["precision"] == "bf16" and models["reference"]["structures_per_s"] > 0
    # e3nn 0.6's tensor products mix dtypes under autocast: recorded as unsupported, with why.
    e3nn = models["e3nn"]
    assert e3nn.get("structures_per_s", 0) > 0 or (not e3nn["supported"] and "fails under bf16" in e3nn["reason"])
    assert load_speed(out, {"reference": BACKBONES["reference"]}) is None


def test_speed_pass_refuses_tf32_off_cuda(tmp_path):
    with pytest.raises(ValueError, match="tf32"):
        main(["speed", "--reduced", "--tasks", TASK, "--backbones", "reference", "--peers", "none",
              "--precision", "tf32", "--device", "cpu", "--json", str(tmp_path / "s.json")])


def test_speed_docs_writes_a_table_into_the_json_s_own_section(speed_run, tmp_path):
    path, _ = speed_run
    speed = json.loads(path.read_text())  # as stored (another test edits the fixture's dict)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    assert main(["speed-docs", "--json", str(path), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert "<!-- speed-cpu-float32:start -->" in text and "## Inference speed side by side: cpu, float32" in text
    rate = speed["tasks"][TASK]["models"]["reference"]["structures_per_s"]
    peer = speed["tasks"][TASK]["models"]["e3nn"]["structures_per_s"]
    assert f"| {TASK} | reference | {rate:.3g} |" in text and f"{rate / peer:.2f}x" in text
