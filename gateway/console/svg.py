"""Small line plots rendered on the server as SVG: no charting library, no script.

A plot is a set of series of (x, y, low, high) points; ``low``/``high`` draw an
interval band (a rating's 95% CI). The output is escaped text ready for a template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 420, 180, 48, 12, 24, 28


@dataclass
class Series:
    name: str
    points: list[tuple[float, float, float | None, float | None]] = field(default_factory=list)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}"
    return f"{v:.3g}"


def line_plot(title: str, series: list[Series], x_label: str = "version") -> str:
    pts = [p for s in series for p in s.points]
    body = [
        f"<title>{escape(title)}</title>",
        f'<text x="{PAD_L}" y="14" class="t">{escape(title)}</text>',
    ]
    if not pts:
        body.append(
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="m">no data yet</text>'
        )
        return _svg(title, body)
    xs = [p[0] for p in pts]
    ys = [v for p in pts for v in (p[1], p[2], p[3]) if v is not None]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y1 = y0 + 1

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B)

    body += [
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" class="a"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" class="a"/>',
        f'<text x="{PAD_L - 4}" y="{sy(y1) + 4:.1f}" text-anchor="end" class="l">{_fmt(y1)}</text>',
        f'<text x="{PAD_L - 4}" y="{sy(y0) + 4:.1f}" text-anchor="end" class="l">{_fmt(y0)}</text>',
        f'<text x="{sx(x0):.1f}" y="{H - 10}" class="l">{_fmt(x0)}</text>',
        f'<text x="{sx(x1):.1f}" y="{H - 10}" text-anchor="end" class="l">{_fmt(x1)}</text>',
        f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle" class="l">{escape(x_label)}</text>',
    ]
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        ordered = sorted(s.points)
        band = [(x, lo, hi) for x, _, lo, hi in ordered if lo is not None and hi is not None]
        if band:
            upper = " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band)
            lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band))
            body.append(f'<polygon points="{upper} {lower}" fill="{color}" opacity="0.15"/>')
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _, _ in ordered)
        body.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, _, _ in ordered:
            tip = f"{escape(s.name)}: {_fmt(y)} at {_fmt(x)}"
            body.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
                f"<title>{tip}</title></circle>"
            )
        body.append(
            f'<text x="{W - PAD_R}" y="{14 + 12 * i}" text-anchor="end" class="k" '
            f'fill="{color}">{escape(s.name)}</text>'
        )
    return _svg(title, body)


def _svg(title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
        f'height="{H}" role="img" aria-label="{escape(title)}" class="plot">'
        + "".join(body)
        + "</svg>"
    )
