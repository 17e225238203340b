"""The compiled pipeline's graph as a figure (notebook 07, docs): read from the spec YAML itself, so the picture
shows what Vertex AI Pipelines would run, not a hand-drawn copy of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def spec_edges(spec: dict[str, Any]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(step -> the group it runs in, [(upstream, downstream)]) over the executor steps: a nested DAG
    (exit handler, gate branches) is flattened, its steps depending on what the group depends on."""
    comps = spec["components"]
    groups: dict[str, str] = {}
    edges: list[tuple[str, str]] = []

    def leaves(comp: str, task: str) -> list[str]:
        """The last steps of a group (those nothing inside it waits for)."""
        dag = comps[comp].get("dag")
        if not dag:
            return [task]
        waited = {d for t in dag["tasks"].values() for d in t.get("dependentTasks", [])}
        return [leaf for name, t in dag["tasks"].items() if name not in waited
                for leaf in leaves(t["componentRef"]["name"], name)]

    def walk(dag: dict[str, Any], group: str, inherited: list[str]) -> None:
        tasks = dag["tasks"]
        for name, task in tasks.items():
            ups = [leaf for dep in task.get("dependentTasks", []) for leaf in leaves(tasks[dep]["componentRef"]["name"], dep)]
            comp = task["componentRef"]["name"]
            sub = comps[comp].get("dag")
            condition = task.get("triggerPolicy", {}).get("condition", "")
            label = group
            if condition.startswith("!"):
                label = "gate stopped"
            elif "== 'pass'" in condition:
                label = "gate passed"
            elif task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED":
                label = "exit handler"
            if sub:
                walk(sub, label, ups or inherited)
            else:
                groups[name] = label
                edges.extend((u, name) for u in (ups or inherited))

    walk(spec["root"]["dag"], "release", [])
    return groups, _reduce(sorted(set(edges)))


def _reduce(edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop an edge another path already implies (a group's steps inherit every input of the group)."""
    succ: dict[str, set[str]] = {}
    for u, v in edges:
        succ.setdefault(u, set()).add(v)

    def reaches(a: str, b: str, skip: tuple[str, str]) -> bool:
        stack, seen = [a], set()
        while stack:
            n = stack.pop()
            for m in succ.get(n, ()):
                if (n, m) == skip or m in seen:
                    continue
                if m == b:
                    return True
                seen.add(m)
                stack.append(m)
        return False

    return [e for e in edges if not reaches(e[0], e[1], e)]


def draw(spec_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A left-to-right drawing of the steps, coloured by group; returns the PNG written (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flant5_lib.fileio import atomic_path

    groups, edges = spec_edges(yaml.safe_load(Path(spec_path).read_text(encoding="utf-8")))
    depth = {n: 0 for n in groups}
    for _ in groups:  # longest path from a source (a DAG of a dozen steps)
        for u, v in edges:
            depth[v] = max(depth[v], depth[u] + 1)
    columns: dict[int, list[str]] = {}
    for n in groups:
        columns.setdefault(depth[n], []).append(n)
    pos = {n: (d, -i + (len(col) - 1) / 2) for d, col in columns.items() for i, n in enumerate(sorted(col))}
    colours = {"release": "#dbe9f6", "gate passed": "#d5f0d5", "gate stopped": "#f6dada", "exit handler": "#eeeeee"}
    fig, ax = plt.subplots(figsize=(2.0 * (max(depth.values()) + 1), 3.2))
    for u, v in edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.annotate("", xy=(x1 - 0.38, y1), xytext=(x0 + 0.38, y0), arrowprops={"arrowstyle": "->", "color": "#555"})
    for n, (x, y) in pos.items():
        ax.text(x, y, n.removesuffix("-op"), ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": colours.get(groups[n], "#ffffff"), "ec": "#666"})
    for i, (label, colour) in enumerate(colours.items()):
        ax.text(0.01 + 0.2 * i, 1.02, label, transform=ax.transAxes, fontsize=8,
                bbox={"boxstyle": "round", "fc": colour, "ec": "#666"})
    ax.set_xlim(-0.6, max(depth.values()) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, max(y for _, y in pos.values()) + 0.8)
    ax.axis("off")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out)
