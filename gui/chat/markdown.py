"""Markdown to the HTML subset a ``QTextBrowser`` shows: paragraphs, lists, tables, and code blocks highlighted
by Pygments (inline styles, which Qt's rich text understands) with a ``copy:N`` link above each one.
"""

from __future__ import annotations

import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

CODE_BACKGROUND = "#F4F1EA"
_FORMATTER = HtmlFormatter(noclasses=True, nowrap=True, style="friendly")


def render(text: str) -> tuple[str, list[str]]:
    """``(html, code_blocks)``: the HTML, and each code block's text in order (what ``copy:N`` copies)."""
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    blocks: list[str] = []

    def fence(renderer, tokens, index, options, env) -> str:
        token = tokens[index]
        code = token.content
        blocks.append(code)
        language = token.info.strip().split()[0] if token.info.strip() else ""
        try:
            lexer = get_lexer_by_name(language) if language else TextLexer()
        except ClassNotFound:
            lexer = TextLexer()
        body = highlight(code, lexer, _FORMATTER).rstrip("\n")
        name, index = html.escape(language or "code"), len(blocks) - 1
        return (
            f'<table width="100%" cellspacing="0" cellpadding="6" style="background:{CODE_BACKGROUND}; margin:4px 0">'
            f'<tr><td style="color:#777">{name}</td><td align="right"><a href="copy:{index}">Copy</a></td></tr>'
            f'<tr><td colspan="2"><pre style="font-family:monospace; margin:0">{body}</pre></td></tr></table>'
        )

    parser.add_render_rule("fence", fence)
    parser.add_render_rule("code_block", fence)
    return parser.render(text), blocks
