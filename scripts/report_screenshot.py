"""The README's picture of the demo's report: the top of runs/demo/report.html,
rendered by headless Chromium (Playwright, as the browser tests use it).

    .venv/bin/python scripts/report_screenshot.py [--report runs/demo/report.html]
                                                  [--out docs/report.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("runs/demo/report.html"))
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not args.report.exists():
        parser.error(f"{args.report}: no report (run `make demo` first)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(args.report.resolve().as_uri())
        page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": 1100, "height": 2600})
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
