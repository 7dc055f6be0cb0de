"""The rows of the results table, and the table as Markdown (readable in a terminal, pasteable in BENCHMARKS.md)."""

from dataclasses import dataclass

YES, NO, NOT_RUN, ERROR, INFO, QUICK = "yes", "**NO**", "not run", "ERROR", "-", "(quick)"


@dataclass
class Row:
    key: str  # the row of issue 6 ("1" to "7"), with a letter for its parts ("4a")
    what: str
    against: str  # what it is measured against, in the same run
    figure: str  # median (spread, n)
    ratio: str = "-"
    target: str = "-"
    met: str = INFO
    notes: tuple = ()  # lines printed under the table


def met(ok):
    return YES if ok else NO


def render(rows, title=None):
    """Given Rows, return the table as Markdown text, followed by the notes of each row."""
    header = ("#", "what", "measured against (same run)", "median (p25-p75, n)", "ratio", "target", "met")
    cells = [header] + [(r.key, r.what, r.against, r.figure, r.ratio, r.target, r.met) for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [f"{title}\n"] if title else []
    out.append(line(header))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(row) for row in cells[1:])
    notes = [f"- {r.key}: {note}" for r in rows for note in r.notes]
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)
