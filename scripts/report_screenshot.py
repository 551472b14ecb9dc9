"""The README's pictures of the demo's report, rendered by headless Chromium
(Playwright, as the browser tests use it): the top of the page (headline, targets,
key figures) and, each where the report has it, the rounds, the win rates, the
over-optimization plot and the training curves.

    .venv/bin/python scripts/report_screenshot.py [--report runs/demo/report.html]
                                                  [--out docs/report.png]

writes docs/report.png (the top) and docs/report-<section>.png beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The report's sections pictured beside the top: their ids in report.html.
SECTIONS = ("rounds", "win-rates", "over-optimization", "training-curves")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("runs/demo/report.html"))
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1100, help="viewport width (CSS pixels)")
    parser.add_argument("--top", type=int, default=1300, help="height of the top's picture")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixels per CSS pixel")
    args = parser.parse_args()
    if not args.report.exists():
        parser.error(f"{args.report}: no report (run `make demo` first)")
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(
            viewport={"width": args.width, "height": 900}, device_scale_factor=args.scale
        )
        page.goto(args.report.resolve().as_uri())
        top = {"x": 0, "y": 0, "width": args.width, "height": args.top}
        page.screenshot(path=str(args.out), full_page=True, clip=top)
        written.append(args.out)
        for section in SECTIONS:
            element = page.query_selector(f"section#{section}")
            if element is None:
                continue
            out = args.out.with_name(f"{args.out.stem}-{section}{args.out.suffix}")
            element.screenshot(path=str(out))
            written.append(out)
        browser.close()
    for out in written:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
