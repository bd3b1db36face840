"""Write the offline HTML template for `dvc plots show`: vega, vega-lite and vega-embed inlined, no CDN.

DVC's default page loads the three libraries from cdn.jsdelivr.net, so plots stay blank without internet. The
versions are the ones DVC's renderer pins. Rebuild (npm's registry is the only network needed):

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    for f in vega*.tgz; do tar xzf $f --one-top-level; done
    python scripts/offline_plots_template.py /tmp/vega-5.20.2 /tmp/vega-lite-5.2.0 /tmp/vega-embed-6.18.2

`.dvc/config` points `plots.html_template` at the result (`.dvc/plots/offline.html`).
"""

import argparse
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def inline(package: Path, script: str) -> str:
    code = (package / "package" / "build" / script).read_text(encoding="utf-8").replace("</script", "<\\/script")
    notice = (package / "package" / "LICENSE").read_text(encoding="utf-8").replace("-->", "- ->")
    return f"<!-- {script} ({package.name}), BSD-3-Clause:\n{notice}-->\n<script>\n{code}\n</script>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vega", type=Path)
    parser.add_argument("vega_lite", type=Path)
    parser.add_argument("vega_embed", type=Path)
    parser.add_argument("--output", type=Path, default=Path(".dvc/plots/offline.html"))
    args = parser.parse_args()
    scripts = "\n".join(
        inline(folder, name)
        for folder, name in (
            (args.vega, "vega.min.js"),
            (args.vega_lite, "vega-lite.min.js"),
            (args.vega_embed, "vega-embed.min.js"),
        )
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(PAGE.format(scripts=scripts), encoding="utf-8")
    print(f"{args.output}: {args.output.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
