"""Benchmark report in three forms: results.json (everything), report.md (tables a person reads) and PNG charts."""
from __future__ import annotations

import json
import os
from collections import defaultdict

# Fields every cell in results.json carries (None where not measured), besides the Cell axes.
RESULT_FIELDS = ("status", "reason", "samples_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                 "cpu_ms_per_batch", "max_abs_diff",
                 "peak_rss_mb", "base_rss_mb", "iterations", "measured_s", "create_ms", "engine", "wall_s")
STATUS_MARK = {"wrong": "WRONG", "skipped": "skipped", "error": "ERROR"}


def write_report(out_dir: str, results: dict) -> list[str]:
    """Write results.json, report.md and the charts into out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    charts = write_charts(out_dir, results)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(render_markdown(results, [os.path.basename(p) for p in charts]))
    return paths + charts


def render_markdown(results: dict, charts: list[str]) -> str:
    cells = results["cells"]
    lines = [f"# Inference benchmark: {results['model']['name']} (profile `{results['profile']}`)", "",
             f"{results['environment']['date']} · `{results['command']}`", ""]
    lines += _environment(results["environment"])
    lines += _counts(cells)
    lines += _best_per_batch(cells)
    lines += _pivot(cells, "Throughput (samples/s; best per batch size in bold)",
                    lambda c: f"{c['samples_per_s']:,.0f}", "samples_per_s")
    lines += _pivot(cells, "Latency per batch, p50 / p99 (ms)",
                    lambda c: f"{c['p50_ms']:.3g} / {c['p99_ms']:.3g}", None)
    lines += _labelled(cells)
    lines += _detail(cells)
    lines += _reasons(cells, "wrong", "Wrong cells (outputs do not match the golden batch)")
    lines += _reasons(cells, "error", "Cells that failed")
    lines += _reasons(cells, "skipped", "Skipped cells (this build or machine cannot run them)")
    lines += _serving(results.get("serving"))
    if charts:
        lines += ["## Charts", ""] + [f"![{name}]({name})" for name in charts] + [""]
    return "\n".join(lines)


def _environment(env: dict) -> list[str]:
    caps = env["paddle_capabilities"]
    gpus = ", ".join(f"{g['name']} ({g['memory_total_mb']} MiB)" for g in env["gpus"]) or env["gpu_note"]
    if env["gpus"]:
        gpus += f"; driver {env['gpu_driver']}, CUDA driver API {env['cuda_driver_version']}"
    rows = [
        ("CPU", f"{env['cpu_model']}, {env['physical_cores']} cores / {env['logical_cpus']} threads "
                f"({env['cpus_usable']} usable)"),
        ("Memory", f"{env['memory_total_gb']} GiB ({env['memory_available_gb']} GiB available at start)"),
        ("OS", f"{env['os']} (kernel {env['kernel']}, {env['machine']})"),
        ("Python / numpy", f"{env['python']} / {env['numpy']}"),
        ("Paddle", f"{env['paddle']}; " + ", ".join(f"{k}: {v}" for k, v in caps.items())),
        ("ONNX Runtime", f"{env['onnxruntime']} ({', '.join(env['onnxruntime_providers'])})"),
        ("GPU", gpus),
        ("Load average (1/5/15 min)", f"start {env['load_average_start']}, end {env.get('load_average_end')}"),
        ("Commit", env["git_commit"] or "unknown"),
    ]
    lines = ["## Environment", "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    busiest = max(env["load_average_start"][0], (env.get("load_average_end") or [0])[0])
    if busiest >= env["cpus_usable"] / 2:
        lines += [f"**The machine was busy (1-minute load up to {busiest} on {env['cpus_usable']} CPUs): wall-clock "
                  "figures are unreliable; CPU ms per batch (in the table of every cell) is steadier.**", ""]
    return lines


def _counts(cells: list[dict]) -> list[str]:
    counts = defaultdict(int)
    for c in cells:
        counts[c["status"]] += 1
    return [f"{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]


def best_cells(cells: list[dict]) -> dict[tuple[str, int], dict]:
    """(device, batch) -> the correct cell with the most samples/s."""
    best: dict[tuple[str, int], dict] = {}
    for c in cells:
        key = (c["device"], c["batch"])
        if c["status"] == "ok" and (key not in best or c["samples_per_s"] > best[key]["samples_per_s"]):
            best[key] = c
    return best


def _best_per_batch(cells: list[dict]) -> list[str]:
    best = best_cells(cells)
    if not best:
        return ["No cell produced correct outputs.", ""]
    paddle = best_cells([c for c in cells if c["backend"] == "paddle"])
    lines = ["## Best correct configuration per batch size", "",
             "Any backend, and Paddle Inference alone (what the servers run, through `ctrkit.inference`).", "",
             "| device | batch | best configuration | samples/s | p50 ms | p99 ms | CPU ms/batch | peak RSS MB "
             "| best Paddle Inference configuration | samples/s | p50 ms | p99 ms |",
             "| --- | ---: | --- |" + " ---: |" * 5 + " --- |" + " ---: |" * 3]
    for key, c in sorted(best.items()):
        p = paddle.get(key)
        tail = (f"{p['config']} | {p['samples_per_s']:,.0f} | {p['p50_ms']:.3g} | {p['p99_ms']:.3g}" if p
                else "none correct | | |")
        lines.append(f"| {key[0]} | {key[1]} | **{c['config']}** | {c['samples_per_s']:,.0f} | {c['p50_ms']:.3g} "
                     f"| {c['p99_ms']:.3g} | {c['cpu_ms_per_batch']:.3g} | {c['peak_rss_mb']:.0f} | {tail} |")
    return lines + [""]


def _pivot(cells: list[dict], title: str, fmt, best_key: str | None) -> list[str]:
    batches = sorted({c["batch"] for c in cells})
    configs = list(dict.fromkeys(c["config"] for c in cells))
    by_key = {(c["config"], c["batch"]): c for c in cells}
    best = {id(c) for c in best_cells(cells).values()} if best_key else set()
    lines = [f"## {title}", "", "| configuration | " + " | ".join(f"b={b}" for b in batches) + " |",
             "| --- |" + " ---: |" * len(batches)]
    for config in configs:
        row = []
        for b in batches:
            c = by_key.get((config, b))
            if c is None:
                row.append("")
            elif c["status"] != "ok":
                row.append(STATUS_MARK[c["status"]])
            else:
                row.append(f"**{fmt(c)}**" if id(c) in best else fmt(c))
        lines.append(f"| {config} | " + " | ".join(row) + " |")
    return lines + [""]


def _labelled(cells: list[dict]) -> list[str]:
    rows = [c for c in cells if c["label"]]
    if not rows:
        return []
    lines = ["## Labelled rows", "",
             "| row | configuration | batch | status | samples/s | p50 ms | p99 ms | CPU ms/batch |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in rows:
        if c["status"] == "ok":
            lines.append(f"| {c['label']} | {c['config']} | {c['batch']} | ok | {c['samples_per_s']:,.0f} "
                         f"| {c['p50_ms']:.3g} | {c['p99_ms']:.3g} | {c['cpu_ms_per_batch']:.3g} |")
        else:
            lines.append(f"| {c['label']} | {c['config']} | {c['batch']} | {c['status']}: {_cell_text(c['reason'])} "
                         "| | | | |")
    return lines + [""]


def _detail(cells: list[dict]) -> list[str]:
    measured = [c for c in cells if c["samples_per_s"] is not None]
    if not measured:
        return []
    lines = ["## Every measured cell", "",
             "| configuration | batch | status | samples/s | p50 ms | p90 ms | p99 ms | CPU ms/batch | max abs diff "
             "| peak RSS MB | iterations |", "| --- | ---: | --- |" + " ---: |" * 8]
    for c in measured:
        diff = "n/a" if c["max_abs_diff"] is None else f"{c['max_abs_diff']:.2g}"
        lines.append(f"| {c['config']} | {c['batch']} | {c['status']} | {c['samples_per_s']:,.0f} | "
                     f"{c['p50_ms']:.3g} | {c['p90_ms']:.3g} | {c['p99_ms']:.3g} | {c['cpu_ms_per_batch']:.3g} | "
                     f"{diff} | {c['peak_rss_mb']:.0f} | {c['iterations']} |")
    return lines + [""]


def _reasons(cells: list[dict], status: str, title: str) -> list[str]:
    """One row per (configuration, reason), listing its batch sizes."""
    grouped: dict[tuple[str, str], list[int]] = defaultdict(list)
    for c in cells:
        if c["status"] == status:
            grouped[(c["config"], c["reason"])].append(c["batch"])
    if not grouped:
        return []
    lines = [f"## {title}", "", "| configuration | batch sizes | reason |", "| --- | --- | --- |"]
    for (config, reason), batches in grouped.items():
        lines.append(f"| {config} | {', '.join(map(str, batches))} | {_cell_text(reason)} |")
    return lines + [""]


def _cell_text(text: str) -> str:
    """One line of text that cannot break a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _serving(serving: dict | None) -> list[str]:
    if not serving:
        return []
    lines = ["## Serving", ""]
    rpc, upload = serving.get("rpc"), serving.get("upload")
    if rpc:
        lines += ["### RPC server (`python -m serving.rpc`, client `tools/rec_client.py` in its own process)", ""]
        if rpc["status"] != "ok":
            lines += [f"Not measured ({rpc['status']}): {rpc['reason']}", ""]
        else:
            lines += ["| transport | concurrency | batch | QPS | samples/s | p50 ms | p99 ms | errors | "
                      "server CPU ms/request |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            lines += [f"| {r['transport']} | {r['concurrency']} | {r['batch']} | {r['qps']:,.1f} | "
                      f"{r['samples_per_s']:,.0f} | {r['p50_ms']:.3g} | {r['p99_ms']:.3g} | {r['errors']} | "
                      f"{r['server_cpu_ms_per_request']:.3g} |" for r in rpc["runs"]] + [""]
    if upload:
        lines += ["### Upload endpoint (`python -m serving.upload`, client in its own process)", ""]
        if upload["status"] != "ok":
            lines += [f"Not measured ({upload['status']}): {upload['reason']}", ""]
        else:
            lat, cases = upload["result"]["latency"], upload["result"]["throughput"]
            lines += ["| case | lines | result |", "| --- | ---: | --- |",
                      f"| sample upload, round trip | {lat['lines']} | p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, "
                      f"p99 {lat['p99_ms']} ms (server {lat['server_total_p50_ms']} ms) |"]
            lines += [f"| {case} | {t['lines']} | {t['best_lines_per_s']:,} lines/s best, "
                      f"{t['median_lines_per_s']:,} median |" for case, t in cases.items()] + [""]
    return lines


# one colour per backend (and device): the best configuration of each is drawn in it, the others faint
BACKEND_COLOURS = {"paddle cpu": "#1f77b4", "paddle gpu": "#9467bd", "onnxruntime cpu": "#ff7f0e",
                   "dygraph cpu": "#2ca02c", "dygraph gpu": "#17becf", "jit_load cpu": "#d62728",
                   "jit_load gpu": "#8c564b"}
FALLBACK_COLOURS = ("#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939")


def throughput_chart_plan(results: dict) -> dict:
    """What the throughput chart draws: per backend (and device) its best correct configuration, highlighted in
    the backend's own colour, and every other correct configuration as a faint grey line; plus the caption
    (machine, software, load average). The best configuration of a backend is the one with the highest mean
    log-throughput over the batch sizes it measured (ties: the one that covers more batch sizes)."""
    import math

    by_config: dict[str, list[dict]] = defaultdict(list)
    for c in results["cells"]:
        if c["status"] == "ok" and c.get("samples_per_s"):
            by_config[c["config"]].append(c)
    groups: dict[str, list[str]] = defaultdict(list)
    for config, cs in by_config.items():
        cs.sort(key=lambda c: c["batch"])
        groups[f"{cs[0]['backend']} {cs[0]['device']}"].append(config)

    def score(config: str) -> tuple[int, float]:
        cs = by_config[config]
        return len(cs), sum(math.log(c["samples_per_s"]) for c in cs) / len(cs)

    highlighted, faint, spare = [], [], iter(FALLBACK_COLOURS)
    for group in sorted(groups, key=lambda g: (list(BACKEND_COLOURS).index(g) if g in BACKEND_COLOURS else 99, g)):
        configs = sorted(groups[group], key=score, reverse=True)
        colour = BACKEND_COLOURS.get(group) or next(spare, "#000000")
        best = configs[0]
        highlighted.append({"group": group, "config": best, "colour": colour,
                            "points": [(c["batch"], c["samples_per_s"]) for c in by_config[best]]})
        faint += [{"group": group, "config": other, "points": [(c["batch"], c["samples_per_s"])
                                                               for c in by_config[other]]} for other in configs[1:]]
    return {"highlighted": highlighted, "faint": faint, "caption": chart_caption(results)}


def chart_caption(results: dict) -> str:
    env = results.get("environment", {})
    load_start = env.get("load_average_start") or []
    load_end = env.get("load_average_end") or []
    fmt = lambda load: "/".join(f"{v:g}" for v in load) if load else "n/a"  # noqa: E731
    cpu = f"{env.get('cpu_model', 'unknown CPU')}, {env.get('physical_cores', '?')} cores / " \
          f"{env.get('logical_cpus', '?')} threads ({env.get('cpus_usable', '?')} usable)"
    caps = env.get("paddle_capabilities") or {}
    gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "no GPU"
    return (f"{env.get('date', '')} · {cpu}, {env.get('memory_total_gb', '?')} GiB, {gpus}\n"
            f"Paddle {env.get('paddle', '?')}{' (CUDA)' if caps.get('cuda') else ''}, ONNX Runtime "
            f"{env.get('onnxruntime', '?')}, Python {env.get('python', '?')} · "
            f"load average (1/5/15 min) at start {fmt(load_start)}, at end {fmt(load_end)}")


def write_charts(out_dir: str, results: dict) -> list[str]:
    """throughput.png (samples/s against batch size: the best configuration per backend highlighted, the rest
    faint; machine and load in the caption) and, with serving runs, serving_latency.png (p50/p99 per RPC transport,
    concurrency and batch, and of the upload round trip)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    plan = throughput_chart_plan(results)
    if plan["highlighted"]:
        fig, ax = plt.subplots(figsize=(10, 6.2))
        for line in plan["faint"]:
            xs, ys = zip(*line["points"])
            ax.plot(xs, ys, color="#9a9a9a", alpha=0.35, linewidth=0.9, marker=".", markersize=3, zorder=1)
        for line in plan["highlighted"]:
            xs, ys = zip(*line["points"])
            ax.plot(xs, ys, color=line["colour"], linewidth=2.6, marker="o", markersize=6, zorder=3,
                    label=f"best {line['group']}: {line['config']}")
            ax.annotate(f"{ys[-1]:,.0f}/s", (xs[-1], ys[-1]), textcoords="offset points", xytext=(6, 0),
                        fontsize=8, color=line["colour"], va="center")
        if plan["faint"]:
            ax.plot([], [], color="#9a9a9a", alpha=0.6, linewidth=0.9,
                    label=f"{len(plan['faint'])} other configurations (every number: report.md tables)")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s (correct cells only)",
               title=f"{results['model']['name']}: throughput, best configuration per backend")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, loc="upper left", frameon=True, framealpha=0.9)
        ax.margins(x=0.12)
        fig.text(0.01, -0.02, plan["caption"], fontsize=7.5, color="#333333", ha="left", va="top")
        paths.append(_save(plt, fig, os.path.join(out_dir, "throughput.png")))
    runs = serving_latencies(results.get("serving") or {})
    if runs:
        fig, ax = plt.subplots(figsize=(10, 5))
        names = [r["name"] for r in runs]
        xs = range(len(runs))
        ax.bar([x - 0.2 for x in xs], [r["p50_ms"] for r in runs], width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_ms"] for r in runs], width=0.4, label="p99")
        ax.set_xticks(list(xs), names, fontsize=7)
        ax.set(ylabel="latency per request (ms)", title="Serving latency percentiles")
        ax.legend()
        fig.text(0.01, -0.02, chart_caption(results), fontsize=7.5, color="#333333", ha="left", va="top")
        paths.append(_save(plt, fig, os.path.join(out_dir, "serving_latency.png")))
    return paths


def serving_latencies(serving: dict) -> list[dict]:
    """[{name, p50_ms, p99_ms}] of every measured serving run, for the latency chart."""
    runs = [{"name": f"rpc {r['transport']}\nc={r['concurrency']} b={r['batch']}", "p50_ms": r["p50_ms"],
             "p99_ms": r["p99_ms"]} for r in serving.get("rpc", {}).get("runs", [])]
    upload = serving.get("upload", {})
    if upload.get("status") == "ok":
        lat = upload["result"]["latency"]
        runs.append({"name": f"upload\n{lat['lines']} lines", "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]})
    return runs


def _save(plt, fig, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
