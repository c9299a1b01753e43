"""Merging suite runs (parallel halves, a later peer-only run) and the bars recomputed over all models."""

from __future__ import annotations

from benchmarks.suite_report import merge, with_speed

TASK = "default-molecules"
FIELDS = ("forces", "dipole", "polarizability", "born_charges", "hyperpolarizability")


def backbone(error: float, config: str = "reference") -> dict:
    return {"config": {"name": config}, "relative_error": error, "inference_structures_per_s": 10.0,
            "fields": {f: {"mae": error, "rmse": 2 * error, "label_mean_abs": 1.0} for f in FIELDS}}


def peer(error: float) -> dict:
    return {"supported": True, "inference_structures_per_s": 10.0,
            "fields": {f: {"mae": error, "rmse": 2 * error} for f in FIELDS}}


def run(tasks: dict, configs: dict) -> dict:
    return {"mode": "full", "environment": {"date": "d"}, "backbone_configs": configs, "tasks": tasks}


def test_a_later_peer_run_adds_its_peer_and_keeps_the_backbones():
    first = run({TASK: {"backbones": {"reference": backbone(0.2), "etgnn": backbone(0.1, "etgnn")},
                        "peers": {"e3nn": peer(0.3)}, "best_backbone": "etgnn", "plots": ["p.png"]},
                 "becs-eps": {"backbones": {"reference": backbone(0.5)}, "peers": {}}},
                {"reference": {"name": "reference"}, "etgnn": {"name": "etgnn"}})
    later = run({TASK: {"backbones": {}, "peers": {"painn": peer(0.05)}, "best_backbone": None}}, {})
    merged = merge([first, later])
    task = merged["tasks"][TASK]
    assert set(task["backbones"]) == {"reference", "etgnn"} and set(task["peers"]) == {"e3nn", "painn"}
    assert task["best_backbone"] == "etgnn" and task["plots"] == ["p.png"]
    assert list(merged["tasks"]) == ["becs-eps", TASK]  # the suite's task order
    assert set(merged["backbone_configs"]) == {"reference", "etgnn"}
    # Bar 1 is judged against every peer, the later one included: painn (0.05) beats etgnn (0.1).
    bars = with_speed(TASK, task, None)["bar"]
    assert bars["accuracy"]["holds"] is False
    assert with_speed(TASK, merge([first])["tasks"][TASK], None)["bar"]["accuracy"]["holds"] is True


def test_a_rerun_backbone_replaces_the_old_record_and_the_best_is_chosen_again():
    first = run({TASK: {"backbones": {"reference": backbone(0.2), "etgnn": backbone(0.1, "etgnn")}, "peers": {},
                        "best_backbone": "etgnn", "plots": ["old.png"]}}, {})
    rerun = run({TASK: {"backbones": {"etgnn": backbone(0.4, "etgnn")}, "peers": {}, "best_backbone": "etgnn",
                        "plots": ["new.png"]}}, {})
    task = merge([first, rerun])["tasks"][TASK]
    assert task["backbones"]["etgnn"]["relative_error"] == 0.4
    assert task["best_backbone"] == "reference"
    assert "plots" not in task  # neither run plotted the new best backbone


def test_merging_a_merged_report_keeps_every_run_and_names_them():
    """Parts of an already merged file survive a second merge, and the report names every run
    (date, commit, tasks, who ran) so a re-run of some tasks is visible."""
    from benchmarks.suite_report import _parts_lines

    first = run({TASK: {"backbones": {"reference": backbone(0.2)}, "peers": {"e3nn": peer(0.3)}}},
                {"reference": {"name": "reference"}})
    second = run({TASK: {"backbones": {}, "peers": {"painn": peer(0.05)}}}, {})
    merged = merge([first, second])
    third = run({TASK: {"backbones": {"reference": backbone(0.1)}, "peers": {}}}, {"reference": {"name": "reference"}})
    third["environment"]["git_commit"] = "abc1234"
    again = merge([merged, third])
    assert len(again["parts"]) == 3
    line = _parts_lines(again, speed={"environment": {}})[0]
    assert "peers only" in line and "commit abc1234" in line and "no peers" in line
    assert "not re-timed" in line
    assert _parts_lines(first, speed=None) == []


def test_conservative_variants_and_the_forces_comparison_table():
    from benchmarks.suite import conservative_heads, etgnn_variants, split_model_name
    from benchmarks.suite_report import forces_comparison

    assert split_model_name("schnet-conservative") == ("schnet", True)
    assert split_model_name("etgnn-lean") == ("etgnn-lean", False)
    assert conservative_heads([{"name": "force"}, {"name": "born"}]) == [{"name": "energy"}, {"name": "born"}]
    record = lambda mae: {"fields": {"forces": {"mae": mae}}, "config": {"name": "etgnn"}}  # noqa: E731
    task = {"targets": {"forces": 1.0},
            "backbones": {"etgnn": record(0.3), "etgnn-conservative": record(0.2)},
            "peers": {"painn": {"fields": {"forces": {"mae": 0.25}}}, "mace": {"supported": False}}}
    assert etgnn_variants(task) == ["etgnn"]  # bar 2 is about the paper's direct model
    lines = forces_comparison({"water-forces": task, "no-forces": {"targets": {"dipole": 1.0}, "backbones": {}}})
    table = "\n".join(lines)
    assert "| water-forces | 0.3 / 0.2 | 0.25 |" in table and "no-forces" not in table and "peer mace" not in table
    assert "- water-forces: best conservative etgnn-conservative 0.2 eV/Å against painn 0.25: 20% lower." in table
    assert forces_comparison({"x": {"targets": {"forces": 1.0}, "backbones": {"etgnn": record(0.3)}}}) == []
