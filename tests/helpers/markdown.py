"""How Prefect's UI will read an artifact: CommonMark with tables (markdown-it-py)."""

from __future__ import annotations

from markdown_it import MarkdownIt


def parse(markdown: str) -> list:
    """The token stream of ``markdown`` as CommonMark + GFM tables."""
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def tables(markdown: str) -> list[list[list[str]]]:
    """Every table as rows of cell texts (header row first)."""
    found, row, table, in_cell = [], None, None, False
    for token in parse(markdown):
        if token.type == "table_open":
            table = []
        elif token.type == "table_close":
            found.append(table)
            table = None
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            table.append(row)
        elif token.type in ("th_open", "td_open"):
            in_cell = True
            row.append("")
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        elif token.type == "inline" and in_cell:
            row[-1] = token.content
    return found


def list_items(markdown: str) -> list[str]:
    """The text of every bullet-list item (a table swallowed by an item shows up here)."""
    items, depth, texts = [], 0, []
    for token in parse(markdown):
        if token.type == "list_item_open":
            depth += 1
            texts = []
        elif token.type == "list_item_close":
            depth -= 1
            items.append(" ".join(texts))
        elif token.type == "inline" and depth:
            texts.append(token.content)
    return items
