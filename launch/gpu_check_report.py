"""What launch/gpu_check.sh prints: the tests' outcomes read from pytest's JUnit XML, and the one
table of the check (steps, bench ratios eager and compiled, the frozen phase's speed-up, the
whole runs' speed-ups, the measured tolerances, what failed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def read_junit(path: Path) -> dict[str, dict]:
    """{test id: {"outcome": passed|failed|skipped, "seconds", "message"}} from pytest's XML."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message", "")
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message", "")
        tests[f"{module}::{case.get('name')}"] = {
            "outcome": outcome,
            "seconds": round(float(case.get("time", 0)), 1),
            "message": message[:500],
        }
    return tests


def totals(tests: dict[str, dict]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for t in tests.values():
        counts[t["outcome"]] += 1
    return counts


def _num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _step(report: dict, name: str) -> dict:
    found = report["steps"].get(name, {})
    return found if found.get("status") == "ok" else {}


def bench_lines(report: dict) -> list[str]:
    """(a)-(d) images/s and the ratios b/a, b/c, b/d, eager and compiled side by side."""
    eager, compiled = _step(report, "bench_eager"), _step(report, "bench_compiled")
    settings = (eager or compiled).get("settings", {})
    out = [
        f"bench: {settings.get('model', '?')} at {settings.get('image_size', '?')} px, "
        f"{settings.get('precision', '?')}, channels_last {settings.get('channels_last', '?')}, "
        f"batch {settings.get('batch_size', '?')}",
        f"{'':34}{'eager':>10}{'compiled':>10}",
    ]
    names = {"a": "(a) synthetic, images/s", "b": "(b) the runner, images/s"}
    names |= {"c": "(c) ImageFolder + PIL, images/s", "d": "(d) blog-script setting, images/s"}
    for key, label in names.items():
        row = [r.get("images_per_second", {}).get(key) for r in (eager, compiled)]
        out.append(f"{label:34}{_num(row[0]):>10}{_num(row[1]):>10}")
    for key in ("b/a", "b/c", "b/d"):
        row = [r.get("ratios", {}).get(key) for r in (eager, compiled)]
        out.append(f"{key:34}{_num(row[0], '{:.2f}'):>10}{_num(row[1], '{:.2f}'):>10}")
    return out


def speedup_lines(report: dict) -> list[str]:
    """The frozen phase with and without the feature cache; both whole runs, blog / ours."""
    off, on = _step(report, "frozen_features_off"), _step(report, "frozen_features_on")
    out = []
    if off and on:
        epochs = len(off["epoch_seconds"])
        out.append(
            f"frozen phase 0 of {off['recipe']} ({epochs} epochs), feature cache on vs off: "
            f"{off['phase_seconds'] / on['phase_seconds']:.2f}x the phase "
            f"({off['phase_seconds']:.1f} s -> {on['phase_seconds']:.1f} s, features "
            f"{on['features_seconds']:.1f} s included), "
            f"{on['images_per_second'] / off['images_per_second']:.1f}x per epoch"
        )
    else:
        out.append("frozen phase, feature cache on vs off: -")
    for label in ("resnet50-two-phase", "transfer"):
        w = _step(report, f"whole_{label}")
        if not w:
            out.append(f"whole run {label}, blog / ours: -")
            continue
        note = f" [{w['note']}]" if w["note"] else ""
        out.append(
            f"whole run {label}, blog / ours: {w['blog_over_ours']:.2f}x "
            f"(blog {w['blog_seconds']:.1f} s, ours {w['ours_seconds']:.1f} s){note}"
        )
    return out


def tests_lines(report: dict) -> list[str]:
    tests = report["steps"].get("tests", {})
    counts = tests.get("counts")
    if not counts:
        return ["tests/gpu: -"]
    out = [
        f"tests/gpu: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    ]
    for name, t in tests["tests"].items():
        if t["outcome"] != "passed":
            out.append(f"  {t['outcome']:8} {name}: {t['message'][:150]}")
    for m in tests.get("measured", []):
        values = {k: v for k, v in m.items() if k not in ("check", "device", "determinism")}
        out.append(f"  measured {m['check']}: {values}")
    return out


def table_lines(report: dict) -> list[str]:
    """The whole table, header to verdict."""
    out = [
        f"gpu_check ({report['mode']}) on {report.get('device', '?')}; torch "
        f"{report.get('torch', '?')}, torchvision {report.get('torchvision', '?')}; "
        f"{report['date']}; {report.get('seconds', 0):.0f} s",
        "",
        *tests_lines(report),
        "",
        *bench_lines(report),
        "",
        *speedup_lines(report),
        "",
        f"{'step':28}{'status':>9}{'seconds':>9}",
    ]
    for name, s in report["steps"].items():
        out.append(f"{name:28}{s['status']:>9}{_num(s.get('seconds')):>9}")
        if s["status"] != "ok":
            out.append(f"    {s.get('error') or s.get('reason')}")
    failed = report.get("failed_steps", [])
    out += ["", f"FAILED: {', '.join(failed)}" if failed else "all steps passed"]
    return out
