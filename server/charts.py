"""Bar charts as plain geometry for the dashboard's server-side SVG (templates/dashboard/chart.html):
no chart library and nothing fetched by the browser. The table beside each chart is its data."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 12, 34  # room for the axis labels


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    x: float
    y: float
    width: float
    height: float
    show_label: bool  # every label when few bars, else every third so they stay readable


@dataclass(frozen=True)
class Tick:
    value: float
    y: float


@dataclass(frozen=True)
class BarChart:
    title: str
    description: str
    bars: list[Bar]
    ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM


def nice_top(largest: float) -> float:
    """The axis top: 1, 2 or 4 times a power of ten, at least the largest value (and at least 2),
    so the middle tick is a whole number too."""
    power = 1.0
    while True:
        for factor in (1, 2, 4):
            if power * factor >= max(largest, 2):
                return power * factor
        power *= 10


def bar_chart(title: str, description: str, points: list[tuple[str, float]]) -> BarChart:
    top = nice_top(max((value for _, value in points), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(points), 1)
    every = 1 if len(points) <= 12 else 3
    bars = [Bar(label, value, x=LEFT + i * slot + slot * 0.15, y=TOP + plot_height * (1 - value / top),
                width=slot * 0.7, height=plot_height * value / top, show_label=i % every == 0)
            for i, (label, value) in enumerate(points)]
    ticks = [Tick(top * f, TOP + plot_height * (1 - f)) for f in (0, 0.5, 1)]
    return BarChart(title, description, bars, ticks)
