"""The dashboard's colours, read from the CSS and scripts it serves: text meets WCAG AA contrast
(4.5:1) on the background it sits on, and chart lines meet the 3:1 of non-text contrast on a card."""

from __future__ import annotations

import re

import pytest

from control_plane.ui import STATIC

CSS = STATIC / "lineside.css"

SHAPES = {".dot.online", ".dot.offline", ".dot.unknown", ".bar", ".bar > span", ".gallery img", ".legend span::before"}
"""Rules whose background paints a shape (a status dot, a bar, an image slot, a legend swatch): no text on it."""

PLACED_IN = {".who": "header.top"}
"""Text the layout puts inside a container its selector does not name (the signed-in user is in the header)."""


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _rules(css: str) -> dict[str, dict[str, str]]:
    """Selector -> declarations, for every rule (inside @media too); later rules add to earlier ones."""
    rules: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S)):
        declarations = dict(
            (name.strip(), value.strip()) for name, _, value in (d.partition(":") for d in body.split(";")) if value
        )
        for selector in selectors.split(","):
            rules.setdefault(" ".join(selector.split()), {}).update(declarations)
    return rules


RULES = _rules(CSS.read_text())
VARIABLES = {name.removeprefix("--"): value for name, value in RULES[":root"].items() if name.startswith("--")}


def colour(value: str | None) -> str | None:
    """A declared value as #rrggbb, through var(); None for what is not one colour (inherit, currentColor...)."""
    if value is None:
        return None
    if found := re.fullmatch(r"var\(--([\w-]+)\)", value):
        return colour(VARIABLES.get(found.group(1)))
    if re.fullmatch(r"#[0-9a-fA-F]{3}", value):
        return "#" + "".join(2 * c for c in value[1:]).lower()
    return value.lower() if re.fullmatch(r"#[0-9a-fA-F]{6}", value) else None


def background(selector: str) -> str | None:
    declarations = RULES.get(selector, {})
    return colour(declarations.get("background-color", declarations.get("background")))


PAGE_SURFACES = [colour(VARIABLES["bg"]), colour(VARIABLES["card"])]
"""What text with no background of its own and no dark container sits on: the page, or a card."""


def surfaces(selector: str) -> list[str | None]:
    """The backgrounds text matched by ``selector`` can sit on: its own, its container's, or the page's."""
    if own := background(selector):
        return [own]
    container = PLACED_IN.get(selector, selector.rsplit(" ", 1)[0] if " " in selector else "")
    return [background(container)] if background(container) else PAGE_SURFACES


def text_pairs() -> list[tuple[str, str, str]]:
    """(selector, text colour, background) for every rule that sets a text colour or a text background."""
    pairs = []
    for selector, declarations in RULES.items():
        text = colour(declarations.get("color", declarations.get("fill")))
        if text is None and background(selector) and selector not in SHAPES:
            # Text on a background of its own keeps the colour of its element's plain rule, else the page's ink.
            text = colour(RULES.get(re.split(r"[.#\[:]", selector)[0], {}).get("color")) or colour(VARIABLES["ink"])
        if text is not None:
            pairs += [(selector, text, behind) for behind in surfaces(selector) if behind is not None]
    return pairs


@pytest.mark.parametrize(("selector", "text", "behind"), text_pairs(), ids=lambda v: str(v))
def test_text_meets_wcag_aa_on_its_background(selector: str, text: str, behind: str) -> None:
    assert contrast(text, behind) >= 4.5, f"{selector}: {text} on {behind} is {contrast(text, behind):.2f}:1"


def test_every_colour_rule_was_checked() -> None:
    """The parser sees the rules it must: the header, buttons, code, flashes; and the lists name real rules."""
    checked = {selector for selector, _, _ in text_pairs()}
    assert {"header.top", ".who", "button", "button.danger", "pre", "#flash p", "#flash p.error", ".secret"} <= checked
    assert SHAPES.issubset(RULES) and set(PLACED_IN.values()).issubset(RULES)


def test_chart_lines_stand_out_on_a_card() -> None:
    scripts = "".join(path.read_text() for path in STATIC.glob("*.js"))
    lines = set(re.findall(r'color: "(#[0-9a-fA-F]{6})"', scripts))  # series colours; grid lines are faint on purpose
    assert lines, "no chart colours found in the scripts"
    card = colour(VARIABLES["card"])
    assert card is not None
    for line in lines:
        assert contrast(line, card) >= 3, f"chart line {line} on the card is {contrast(line, card):.2f}:1"
