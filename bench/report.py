"""Markdown tables of one benchmark result, for docs/PERFORMANCE.md.

.venv/bin/python bench/report.py bench/results/<timestamp>.json
"""

from __future__ import annotations

import json
import statistics
import sys


def _rng(s: dict, fmt: str = ".0f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def markdown(result: dict) -> str:
    args = result["args"]
    lines = [
        f"Run `{result['date']}`: {args['rounds']} rounds x {args['duration']:g} s, "
        f"wrk -t{args['threads']} -c{args['connections']}, fixed rate at {args['rate_fraction']:g} x peak.",
        "",
        "| case | req/s median (min-max) | spread | p50 ms | p99 ms | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["peaks"].items():
        lines.append(
            f"| {name} | {_rng(s['rps'])} | {s['rps']['spread_pct']:.0f} % | {s['p50_ms']['median']:.1f} "
            f"| {s['p99_ms']['median']:.1f} | {s['loadavg_1m']['median']:.1f} |"
        )
    lines += [
        "",
        "| fixed rate (open loop) | rate/s | achieved/s | p50 ms | p99 ms median (min-max) | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in result["fixed_rate"].items():
        lines.append(
            f"| {name} | {_rng(f['rate'])} | {f['achieved_rate']['median']:.0f} "
            f"| {f['p50_ms']['median']:.1f} | {_rng(f['p99_ms'], '.1f')} | {f['failed']} |"
        )
    info = result.get("informational", {}).get("raw_1m_over_raw_100")
    lines += ["", "| # | target | goal | measured | per round | result |", "|---|---|---|---|---|---|"]
    for r in result["targets"]:
        goal = f">= {r['threshold']:.2f}" if r["kind"] == "ratio>=" else f"<= {r['threshold']:.0f} ms"
        value = f"{r['value']:.2f}" if r["kind"] == "ratio>=" else f"{r['value']:.1f} ms"
        verdict = "PASS" if r["pass"] else "FAIL"
        lines.append(f"| {r['id']} | {r['what']} | {goal} | {value} | {r['detail']} | {verdict} |")
    if info:
        lines += [
            "",
            f"Raw app on 1,000,000 / 100 tokens: {info['value']:.2f} "
            f"(rounds {info['per_round_min']:.2f}-{info['per_round_max']:.2f}).",
        ]
    loads = [v for s in result["peaks"].values() for v in s["loadavg_1m"]["values"]]
    lines.append(f"Median 1-minute load average during the runs: {statistics.median(loads):.1f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(markdown(json.load(fh)))
