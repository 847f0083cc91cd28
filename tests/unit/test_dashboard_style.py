"""The dashboard's colours: text and controls meet WCAG AA contrast (4.5:1) on their backgrounds."""

from __future__ import annotations

import re

from control_plane.ui import STATIC


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_meet_wcag_aa() -> None:
    css = (STATIC / "lineside.css").read_text()
    colours = dict(re.findall(r"--(\w+): (#[0-9a-f]{6})", css))
    for name in ("ink", "muted", "blue", "green", "red", "amber"):  # text on white cards and on the page
        for background in ("#ffffff", colours["bg"]):
            assert contrast(colours[name], background) >= 4.5, f"--{name} on {background}"
    assert contrast("#ffffff", colours["blue"]) >= 4.5  # button labels
    assert contrast("#ffffff", colours["red"]) >= 4.5  # danger buttons, error flashes
    assert contrast("#ffffff", "#12263f") >= 4.5  # header
    assert contrast("#dbe4ee", "#12263f") >= 4.5  # the signed-in user in the header
    assert contrast("#e6edf3", "#0f1720") >= 4.5  # code examples
