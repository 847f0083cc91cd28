"""Screenshots of each role's main page for the README, taken from a running demo in headless Chromium.

    python -m docs.screenshots            # starts `lineside demo`, writes docs/screenshots/<role>.png

The browser test suite calls ``take`` too, so the script keeps working.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from tests.integration.browser import RunningDemo, chromium_path, login

OUT = Path(__file__).parent / "screenshots"
PAGES = {"plant_manager": "plant", "factory_it": "it", "operator": "operator", "edge_operator": "contributor"}


def take(browser: Any, demo: RunningDemo, out: Path, settle_s: float = 6.0) -> list[Path]:
    """One full-page PNG per role, after the live data has had ``settle_s`` to arrive."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for role in PAGES:
        context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        login(page, demo.url, *demo.logins[role])
        page.wait_for_timeout(settle_s * 1000)
        path = out / f"{role}.png"
        page.screenshot(path=str(path), full_page=True)
        context.close()
        paths.append(path)
        print(f"wrote {path}", flush=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="Folder for the PNG files.")
    parser.add_argument("--warmup", type=float, default=40.0, help="Seconds of streaming before the screenshots.")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium found: run `make browser` (Debian's chromium) or set LINESIDE_CHROMIUM")
    print("starting `lineside demo` (Ray, broker, slice, robots)...", flush=True)
    demo = RunningDemo.start(Path(tempfile.mkdtemp(prefix="lineside-shots-")))
    try:
        import time

        print(f"streaming for {args.warmup:.0f}s so the pages have data...", flush=True)
        time.sleep(args.warmup)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            take(browser, demo, args.out)
            browser.close()
    finally:
        code, _ = demo.stop()
        print(f"demo stopped (exit {code})", flush=True)


if __name__ == "__main__":
    main()
