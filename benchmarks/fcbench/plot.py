"""The PNG bar chart of a report's speedups (matplotlib, imported only when plotting)."""
from __future__ import annotations

from .cases import OPS

def require_matplotlib():
    """None when matplotlib imports, else the one-line reason and the command that installs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install matplotlib (or install fastconv with its [bench] extra)"
    return None


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mode, v, test = report["modes"][0], report["vendors"][0], report["under_test"]
    rows = [r for r in report["rows"] if v in r.get("speedup", {}).get(mode, {})]
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(rows)))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["speedup"][mode][v] for r in rows], color=[colors[r["op"]] for r in rows])
    ax.set_yticks(y, [f"{r['suite']} {r['layer']} {r['op']}" + ("  MISMATCH" if not r["ok"] else "") for r in rows],
                  fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup = {v} time / {test} time ({'kernel-only' if mode == 'kernel' else 'with allocation'}; >1: {test} faster)")
    ax.set_title(f"{test} vs {v} on {report['device']} ({report['dtype']}, {report['threads']} threads)")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=list(colors),
              fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
