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
    lines = [
        f"- runtime: `{results['runtime']}` (server started with `{results['server_cmd']}`)",
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
    return "\n".join(lines) + "\n"


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
        "SAM 2.1 hiera_tiny weights and the same photos). Targets are issue 4's. Random "
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
        + "\nRaw numbers: `bench/results/"
        + f"{results['date']}.json`.\n\n"
        "GPU: not measured here (no accelerator was lent to this run).\n"
    )
