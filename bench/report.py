"""Turn one benchmark run into a table (stdout), JSON (bench/results/) and docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (key in results["server"], label, reference key in results["reference"] or None,
#  how the ratio is formed, target text, check on the value/ratio)
ROWS: list[tuple[str, str, str | None, str, str]] = [
    (
        "embed_server_s",
        "embed, server-side, distinct photos, median",
        "set_image_s",
        "le:0.45",
        "<= 0.45x",
    ),
    (
        "click_rtt_s",
        "cached click over HTTP (1 point, rle), median",
        "predict_1pt_s",
        "le:0.4",
        "<= 0.4x",
    ),
    ("five_rtt_s", "cached 5 prompts over HTTP (rle), median", "predict_5x_s", "le:0.3", "<= 0.3x"),
    (
        "click_throughput_per_s",
        "cached-click throughput, 4 clients (/s)",
        "predict_rate_per_s",
        "ge:1.3",
        ">= 1.3x",
    ),
    (
        "click_p95_under_embed_s",
        "click p95 while 2 clients embed",
        None,
        "abs_le:0.150",
        "<= 150 ms",
    ),
    ("rss_per_image_mib", "RSS growth per cached image (MiB)", None, "abs_le:8.5", "<= 8.5 MiB"),
]


def _fmt(key: str, value: float) -> str:
    if key.endswith("_s") and not key.endswith("_per_s"):
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.1f}"


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: value, reference, ratio, pass/fail."""
    server, ref = results["server"], results["reference"]
    rows = []
    for key, label, ref_key, rule, target in ROWS:
        if key == "embed_server_s" and native_bf16(results):  # issue 17: by CPU kind
            rule, target = "le:0.25", "<= 0.25x (native bf16/VNNI CPU)"
        value = server[key]
        reference = ref.get(ref_key) if ref_key else None
        kind, _, bound = rule.partition(":")
        limit = float(bound)
        if kind == "abs_le":
            ratio, ok = None, value <= limit
        else:
            assert reference is not None
            ratio = value / reference
            ok = ratio <= limit if kind == "le" else ratio >= limit
        rows.append(
            {
                "figure": label,
                "value": _fmt(key, value),
                "reference": _fmt(ref_key or key, reference) if reference is not None else "-",
                "ratio": f"{ratio:.2f}x" if ratio is not None else "-",
                "target": target,
                "met": ok,
            }
        )
    if "first_click_s" in server:
        ratio = server["first_over_warm"]
        rows.append(
            {
                "figure": "first click after an embed vs a warm click (1 point, rle), median",
                "value": _fmt("first_click_s", server["first_click_s"]),
                "reference": _fmt("warm_click_s", server["warm_click_s"]) + " (warm)",
                "ratio": f"{ratio:.2f}x",
                "target": "<= 1.2x",
                "met": ratio <= 1.2,
            }
        )
    fid = server["fidelity"]
    rows.append(
        {
            "figure": "fidelity vs reference, 20 prompts x 3 photos",
            "value": f"mean IoU {fid['mean']:.4f}, min {fid['min']:.4f}",
            "reference": "-",
            "ratio": "-",
            "target": "mean >= 0.98, min >= 0.95",
            "met": fid["mean"] >= 0.98 and fid["min"] >= 0.95,
        }
    )
    return rows


def native_bf16(results: dict[str, Any]) -> bool:
    flags = results["machine"].get("cpu_flags", [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def runtimes_table(results: dict[str, Any]) -> str:
    """One row per pinned runtime measured in the same run (bench/run.py --runtimes)."""
    measured = results.get("runtimes") or {}
    if not measured:
        return ""
    set_image = results["reference"]["set_image_s"]
    limit = 0.25 if native_bf16(results) else 0.45
    lines = [
        "| runtime (pinned) | precision | embed, server-side | vs set_image | target | "
        "first click / warm click | first/warm | fidelity mean / min IoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in measured.items():
        precision = ", ".join(str(v.get("precision")) for v in r["runtimes"].values()) or "-"
        ratio = r["embed_server_s"] / set_image
        fid = r["fidelity"]
        lines.append(
            f"| `{name}` | {precision} | {_fmt('embed_server_s', r['embed_server_s'])} | "
            f"{ratio:.2f}x | <= {limit}x: {'yes' if ratio <= limit else 'NO'} | "
            f"{r['first_click_s'] * 1000:.1f} / {r['warm_click_s'] * 1000:.1f} ms | "
            f"{r['first_over_warm']:.2f}x | {fid['mean']:.4f} / {fid['min']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def choice_line(results: dict[str, Any]) -> str:
    """What `auto` chose, and the candidates' timings, from the server's /info."""
    for model_id, info in (results["server"].get("runtimes") or {}).items():
        found = info.get("choice")
        if found:
            timings = ", ".join(
                f"{name} refused ({c['refused']})"
                if "refused" in c
                else f"{name} {c['embed_s']:.3f} s (IoU {c['mean_iou']:.4f} / {c['min_iou']:.4f}"
                f"{'' if c['meets_tolerance'] else ', outside the tolerance'})"
                for name, c in found["candidates"].items()
            )
            return (
                f"- `auto` on {model_id}: {info['runtime']} {info['precision']}, the encoder "
                f"chosen by measurement at preparation ({found['measured_at']}): {timings}\n"
            )
    return ""


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| figure | this server | reference | ratio | target | met |\n|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['figure']} | {r['value']} | {r['reference']} | {r['ratio']} | {r['target']} | "
        f"{'yes' if r['met'] else 'NO'} |\n"
        for r in rows
    )


def extras(results: dict[str, Any]) -> str:
    s, ref = results["server"], results["reference"]
    m = results["machine"]
    lines = [
        f"- runtime: `{results['runtime']}` (server started with `{results['server_cmd']}`)",
        f"- CPU: {m['cpu']}, {m['cores']} cores, kind: {m.get('cpu_kind', '-')}; lscpu flags: "
        f"{', '.join(m.get('cpu_flags', [])) or '-'}; load average at start "
        f"{_loads(m.get('load_average'))}, at end {_loads(m.get('load_average_end'))}",
        f"- reference (in-process `SAM2ImagePredictor`, fp32 eager): set_image "
        f"{ref['set_image_s']:.2f} s, predict 1 point {ref['predict_1pt_s'] * 1000:.1f} ms, "
        f"5 x predict {ref['predict_5x_s'] * 1000:.0f} ms",
        f"- server embed round trip (median) {s['embed_rtt_s']:.2f} s; click p50 while 2 clients "
        f"embed {s['click_p50_under_embed_s'] * 1000:.1f} ms; embeds completed meanwhile "
        f"{s['embeds_under_load']}",
        f"- start to ready: first start (empty runtime cache) "
        f"{_opt(s.get('cold_start_s'))}, warm start {_opt(s.get('warm_start_s'))}",
        f"- idle RSS after load {s['idle_rss_mib']:.0f} MiB; RSS after all embeds "
        f"{s['final_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines) + "\n" + choice_line(results)


def _loads(values: list[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def write(results: dict[str, Any]) -> tuple[Path, Path | None]:
    rows = evaluate(results)
    results["rows"] = rows
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    default = results["runtime"] in ("auto", "cli")
    suffix = "" if default else f"-{results['runtime']}"
    json_path = out_dir / f"{results['date']}{suffix}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    if not default:  # docs/benchmarks.md records the default configuration only
        return json_path, None
    doc = ROOT / "docs" / "benchmarks.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    section = f"{START}\n{markdown(results, rows)}{END}\n"
    text = doc.read_text() if doc.exists() else ""
    if START in text and END in text:  # keep the hand-written rest of the page
        head, _, tail = text.partition(START)
        text = head + section + "\n" + tail.partition(END)[2].lstrip("\n")
    else:
        text = "# Benchmarks\n\n" + section
    doc.write_text(text)
    return json_path, doc


START = "<!-- bench/run.py: latest run (generated) -->"
END = "<!-- end of generated section -->"


def markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = results["machine"]
    return (
        "Produced by `python -m bench.run` (one run: Meta's reference `SAM2ImagePredictor` "
        "in-process, then a real uvicorn server on 127.0.0.1, on the same seeded random "
        "SAM 2.1 hiera_tiny weights and the same photos). Targets are issue 4's (the embed's "
        "and the first click's: issue 17's, by CPU kind). Random "
        "weights make the masks noisier than trained ones; fidelity is the IoU of the final "
        "masks against the reference on 20 seeded prompts x 3 photos (skimage astronaut, "
        "coffee, chelsea).\n\n"
        f"## Latest run: {results['date']}\n\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB, no GPU; "
        f"Python {m['python']}, torch {m['torch']}, openvino {m['openvino']}\n"
        f"- commit: `{results['commit']}`\n\n"
        + table(rows)
        + "\n"
        + extras(results)
        + (
            "\nPinned runtimes, same run (warm servers, `SAM2SERVE_RUNTIME=<runtime>`):\n\n"
            + runtimes_table(results)
            if results.get("runtimes")
            else ""
        )
        + "\nRaw numbers: `bench/results/"
        + f"{results['date']}.json`.\n\n"
        "GPU: not measured here (no accelerator was lent to this run).\n"
    )
