"""The peers' rows in the bench's printed report: a table per group and the targets against them."""

from __future__ import annotations


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _name(row: dict) -> str:
    if row["peer"] == "comfy":
        return f"ComfyUI {row.get('version') or '?'} TrainLoraNode"
    if row["peer"] == "simpletuner":
        return f"SimpleTuner {row.get('version', '?')} (its Lumina2 model step)"
    return f"kohya sd-scripts {row.get('version', '?')} (lumina_train_network)"


def best_of_ours(group: dict, peak_gib: float | None) -> dict | None:
    """Our fastest variant of the group, within `peak_gib` when given (None when none fits)."""
    rows = [v for v in group["variants"] if "error" not in v and (peak_gib is None or v["peak_gib"] <= peak_gib)]
    return max(rows, key=lambda v: v["samples_per_s"], default=None)


def ours_over(group: dict, row: dict) -> tuple[float, dict | None]:
    """(ours ÷ peer, our variant used): within the peer's peak memory when its target asks so."""
    if "samples_per_s" not in row:
        return 0.0, None
    ours = best_of_ours(group, row["peak_gib"] if row.get("target_at_memory") else None)
    return (ours["samples_per_s"] / row["samples_per_s"], ours) if ours else (0.0, None)


def peer_lines(group: dict) -> list[str]:
    rows = group.get("peers") or []
    if not rows:
        return []
    lines = [f"#### Peers: {group['group']['name']}", "",
             "| peer | setting | samples/s | peak GiB | ours ÷ peer | our variant | forward batch | warm-up s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "samples_per_s" not in r:
            why = r.get("skipped") or r.get("error", "?")
            lines.append(f"| {_name(r)} | {r['label']} | {'not run' if 'skipped' in r else 'failed'}: "
                         f"{why[:110]} | | | | | |")
            continue
        ratio, ours = ours_over(group, r)
        fwd = ", ".join(str(b) for b in r.get("forward_batches", [])) or "-"
        lines.append(f"| {_name(r)} | {r['label']} | {_f(r['samples_per_s'])} | {_f(r['peak_gib'], 1)} | "
                     f"{_f(ratio)}× | {ours['label'] if ours else '-'} | {fwd} | {_f(sum(r['warmup_s']), 0)} |")
    return lines


def peer_target_rows(groups: list[dict]) -> list[str]:
    lines = []
    for g in groups:
        for r in g.get("peers") or []:
            if not r.get("target_ratio"):
                continue
            name = f"{g['group']['name']}: ≥ {r['target_ratio']:g}× {_name(r)}, {r['label']}"
            asked = f"≥ {r['target_ratio']:g}×" + (f", ours ≤ {r['peak_gib']:.1f} GiB" if r.get("target_at_memory")
                                                   and "peak_gib" in r else "")
            ratio, ours = ours_over(g, r)
            if not ours:
                lines.append(f"| {name} | {asked} | {'not run' if 'samples_per_s' not in r else 'no variant fits'} | no |")
                continue
            got = f"{ratio:.2f}× ({ours['label']}, {ours['peak_gib']:.1f} GiB)"
            if ratio < r["target_ratio"]:
                got += f", {100 * (1 - ratio / r['target_ratio']):.0f} % short"
            lines.append(f"| {name} | {asked} | {got} | {'yes' if ratio >= r['target_ratio'] else 'no'} |")
    return lines
