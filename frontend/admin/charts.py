"""Small bar charts as inline SVG, drawn on the server: no script and no library.

Each day is one bar, its series stacked; every bar carries a ``<title>``
with its numbers (a tooltip, read out by screen readers), and a series can
be hatched as well as coloured, so the chart reads without colour. The
numbers themselves are also in the tables beside each chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

WIDTH = 960
HEIGHT = 170
LEFT = 48
RIGHT = 28
BOTTOM = 22
TOP = 8
PLOT_WIDTH = WIDTH - LEFT - RIGHT
PLOT_HEIGHT = HEIGHT - BOTTOM - TOP


@dataclass(frozen=True)
class Series:
    """One stacked part of every bar: its name, a value per day, its CSS class, and whether it is hatched."""

    label: str
    values: list[float]
    css: str
    hatched: bool = False


def bar_chart(chart_id: str, title: str, days: list[date], series: list[Series]) -> str:
    """An SVG chart of ``series`` stacked per day; ``chart_id`` names its hatch pattern."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    top = _nice_ceiling(max(totals, default=0))
    slot = PLOT_WIDTH / max(len(days), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{chart_id}-title" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<defs><pattern id="{chart_id}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" class="hatch-ground"/>'
        '<line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern></defs>',
        *_grid(top),
    ]
    for i, day in enumerate(days):
        x = LEFT + i * slot + slot * 0.15
        parts.append(_bar(chart_id, day, x, slot * 0.7, [(s, s.values[i]) for s in series], top))
        if i % 7 == (len(days) - 1) % 7:
            parts.append(_text(x + slot * 0.35, HEIGHT - 6, "middle", day.strftime("%d %b")))
    parts.append("</svg>")
    return "".join(parts)


def _grid(top: float) -> list[str]:
    parts = []
    for fraction in (0, 0.5, 1):
        y = TOP + PLOT_HEIGHT * (1 - fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(_text(LEFT - 6, y + 4, "end", _short(top * fraction)))
    return parts


def _bar(chart_id: str, day: date, x: float, width: float, parts: list[tuple[Series, float]], top: float) -> str:
    described = ", ".join(f"{value} {s.label}" for s, value in parts)
    drawn = [f"<g><title>{day.isoformat()}: {escape(described)}</title>"]
    base: float = TOP + PLOT_HEIGHT
    for s, value in parts:
        height = PLOT_HEIGHT * value / top if top else 0
        base -= height
        size = f'width="{width:.1f}" height="{height:.1f}"'
        drawn.append(f'<rect {_paint(chart_id, s)} x="{x:.1f}" y="{base:.1f}" {size}/>')
    return "".join(drawn) + "</g>"


def _text(x: float, y: float, anchor: str, text: str) -> str:
    return f'<text class="axis" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def legend(chart_id: str, series: list[Series]) -> str:
    """The series' names beside small swatches drawn as the bars are (hatched where they are)."""
    items = []
    for s in series:
        swatch = (
            f'<svg class="swatch" viewBox="0 0 12 12" aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
            f'<rect {_paint(chart_id, s)} width="12" height="12"/></svg>'
        )
        items.append(f"<li>{swatch} {escape(s.label)}</li>")
    return f'<ul class="legend">{"".join(items)}</ul>'


def _paint(chart_id: str, series: Series) -> str:
    """How a series is filled: its class's colour, or the chart's hatch pattern (which a class would override)."""
    if series.hatched:
        return f'class="hatched" fill="url(#{chart_id}-hatch)"'
    return f'class="{series.css}"'


def _nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"
