"""Paste benchmark tables into README.md between <!-- BEGIN bench:NAME --> and <!-- END bench:NAME -->.

The README never holds a hand-typed figure: each block is the markdown a benchmark script wrote to
benchmarks/results/NAME.md. A missing result leaves a note saying which command produces it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- BEGIN bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END bench:(?P=name) -->)", re.S)


def render(text: str, results: Path) -> str:
    def fill(m: re.Match) -> str:
        md = results / f"{m['name']}.md"
        body = md.read_text().strip() if md.exists() else f"*Not yet run: no `benchmarks/results/{m['name']}.md`.*"
        body = re.sub(r"^#+ .*\n+", "", body, count=1)  # the README has its own heading
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return BLOCK.sub(fill, text)


def main() -> None:
    readme = REPO / "README.md"
    readme.write_text(render(readme.read_text(), REPO / "benchmarks" / "results"))


if __name__ == "__main__":
    main()
