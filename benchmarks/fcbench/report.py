"""Text and markdown tables of a benchmark report."""
from __future__ import annotations

import math
import sys

def fmt(x, digits=3):
    if x is None:
        return "-"
    if x == 0 or math.isinf(x) or 0.01 <= abs(x) < 10**digits:
        return f"{x:.{digits}g}" if not math.isinf(x) else "inf"
    return f"{x:.2e}" if abs(x) < 0.01 else f"{x:.0f}"


def print_table(report, out=sys.stdout, markdown=False):
    """One table per suite (aligned text, or markdown), geometric means at the bottom."""
    impls, ref_names, test, modes = report["implementations"], report["vendors"], report["under_test"], report["modes"]
    first = modes[0]
    tested = report.get("tested", [test])  # older reports: the last implementation only
    label = {"kernel": "", "alloc": "+a "}
    cols = [("layer", lambda r: r["layer"]), ("op", lambda r: r["op"]), ("shape", lambda r: r["shape"])]
    for mode in modes:
        for n in impls:
            cols.append((f"{label[mode]}{n} ms", lambda r, m=mode, n=n: fmt(r["time"][m].get(n, {}).get("median_ms"))))
        for v in ref_names:
            head = "speedup" if len(ref_names) == 1 else f"vs {v}"
            cols.append((f"{label[mode]}{head}", lambda r, m=mode, v=v: fmt(r.get("speedup", {}).get(m, {}).get(v), 2) + "x"))
        if mode == first:
            for n in impls:
                cols.append((f"{n} rate", lambda r, m=mode, n=n: fmt(r["rate"][m].get(n)) + (" GF/s" if r["unit"] == "GFLOP/s" else " GB/s")))
            for n in tested:  # % of the measured ceiling (GEMM GFLOP/s or copy GB/s)
                cols.append(("%ceil" + (f" {n}" if len(tested) > 1 else ""),
                             lambda r, m=mode, n=n: fmt(r["pct_ceiling"][m].get(n), 2)))
    for n in tested:
        cols.append(("rel.err" + (f" {n}" if len(tested) > 1 else ""),
                     lambda r, n=n: fmt(r["rel_err"].get(n), 2)))
    cols.append(("check", lambda r: "ok" if r["ok"] else "!!! MISMATCH !!!" if not r["errors"] else "!!! ERROR !!!"))

    for suite in dict.fromkeys(r["suite"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["suite"] == suite]
        cells = [[f(r) for _, f in cols] for r in rows]
        for g in report["geomean"]:
            if g["suite"] == suite:
                line = ["geomean", g["op"], f"{g['cases']} cases"]
                for mode in modes:
                    line += [""] * len(impls) + [fmt(g["speedup"][mode].get(v), 2) + "x" for v in ref_names]
                    line += [""] * (len(impls) + len(tested)) if mode == first else []
                cells.append(line + [""] * (len(tested) + 1))
        if markdown:
            print(f"\n**{suite}**\n", file=out)
            print("| " + " | ".join(h for h, _ in cols) + " |\n|" + "---|" * len(cols), file=out)
            for c in cells:
                print("| " + " | ".join(x.replace("|", "/") for x in c) + " |", file=out)
            continue
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
        print(f"\n== {suite} ==", file=out)
        print("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)), file=out)
        for i, c in enumerate(cells):
            if i == len(rows):
                print("  ".join("-" * w for w in widths), file=out)
            print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=out)
    for r in report["rows"]:
        for n, e in r["errors"].items():
            print(f"ERROR {r['suite']}/{r['layer']}/{r['op']} [{n}]: {e}", file=out)


def print_summary(report, out=sys.stdout):
    """The line that heads a saved report: its command, load, wall time and measured ceilings."""
    m, c = report["machine"], report["ceilings"]
    print(f"`{report['command']}` ({report['date']}, {m.get('cpu', 'unknown CPU')}, load average "
          f"{m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}, wall {report['wall_s']} s); ceilings: "
          f"{c['gemm']} {c['gemm_gflops']:.0f} GFLOP/s, {c['copy']} {c['copy_gbs']:.1f} GB/s", file=out)
