"""mkdocs hooks: the README is the site's home page, and links written for the repository work on the site."""

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_DOCS = {"README.md": "index.md", "dvc.yaml": "dvc.yaml", "params.yaml": "params.yaml"}  # file -> site path
_RELATIVE_LINK = re.compile(r"\]\((?![a-z]+:)([^)#\s]+)(#[^)\s]*)?\)")


def on_files(files, config):
    """The files outside docs/ that the pages link to join the site."""
    for name, site_path in OUTSIDE_DOCS.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / name)))
    return files


def site_path(repository_path: str) -> str:
    """Where a repository file lands on the site: docs/ is the site's root."""
    return (
        repository_path.removeprefix("docs/") if repository_path.startswith("docs/") else OUTSIDE_DOCS[repository_path]
    )


def on_page_markdown(markdown, page, config, files):
    """Rewrites each relative link from the page's place in the repository to its place on the site."""
    folder = ROOT if page.file.src_uri == "index.md" else ROOT / "docs"

    def rewrite(link: re.Match) -> str:
        target = (folder / link.group(1)).resolve().relative_to(ROOT).as_posix()
        return f"]({site_path(target)}{link.group(2) or ''})"

    return _RELATIVE_LINK.sub(rewrite, markdown)
