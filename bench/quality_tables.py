"""Markdown tables of ``bench.train``'s quality runs: one row per run, and the layouts / seeds compared
with each other (the run-to-run spread beside the layout effect)."""

from __future__ import annotations

from typing import Any

QualityKey = tuple[str, str, str]
"""(amp label, layout label, seed label) of one quality run."""


def quality_table(results: dict[QualityKey, dict[str, Any]]) -> str:
    """Markdown table, one row per run: s/step, eval photometric, training-batch photometric, AbsRel."""
    lines = ["| train.amp | layout | seed | s/step | photometric loss (eval, all images), untrained -> trained "
             "| training batches, first / last 10 steps | AbsRel (median scaled, LiDAR), untrained -> trained |",
             "|---|---|---|---|---|---|---|"]
    for (amp, layout, seed), q in results.items():
        lines.append(f"| {amp} | {layout} | {seed} | {q['seconds_per_step']:.3f} | {q['before']['photometric']:.4f} "
                     f"-> {q['after']['photometric']:.4f} | {q['train_photometric_first10']:.4f} -> "
                     f"{q['train_photometric_last10']:.4f} | {q['before']['abs_rel']:.4f} -> "
                     f"{q['after']['abs_rel']:.4f} |")
    return "\n".join(lines)


def _relative(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.2f}%"


def layout_table(results: dict[QualityKey, dict[str, Any]]) -> str:
    """Markdown: trained photometric / AbsRel of each layout against the first layout, same (amp, seed);
    then, per (amp, layout), the later seeds against the first seed (the run-to-run spread to compare with)."""
    amps = list(dict.fromkeys(k[0] for k in results))
    layouts = list(dict.fromkeys(k[1] for k in results))
    seeds = list(dict.fromkeys(k[2] for k in results))
    lines = ["| train.amp | compared | photometric (eval, trained) | relative | AbsRel (trained) | relative |",
             "|---|---|---|---|---|---|"]

    def row(amp: str, label: str, mine: dict[str, Any], base: dict[str, Any]) -> str:
        p, b = mine["after"], base["after"]
        return (f"| {amp} | {label} | {p['photometric']:.4f} vs {b['photometric']:.4f} "
                f"| {_relative(p['photometric'], b['photometric'])} | {p['abs_rel']:.4f} vs {b['abs_rel']:.4f} "
                f"| {_relative(p['abs_rel'], b['abs_rel'])} |")

    for amp in amps:
        for seed in seeds:
            for layout in layouts[1:]:
                lines.append(row(amp, f"{layout} vs {layouts[0]}, seed {seed}", results[(amp, layout, seed)],
                                 results[(amp, layouts[0], seed)]))
        for layout in layouts:
            for seed in seeds[1:]:
                lines.append(row(amp, f"seed {seed} vs seed {seeds[0]}, {layout}", results[(amp, layout, seed)],
                                 results[(amp, layout, seeds[0])]))
    return "\n".join(lines)
