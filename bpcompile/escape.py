"""Spec text is data: one escaping function per output language.

Every piece of text that comes from a spec (its source, its file path, an
expression as written, a description) and reaches an output goes through the
function for that output, never pasted raw:

    ===============  =========================================================
    output           function
    ===============  =========================================================
    Python source    ``py_str`` (a string literal), ``py_docstring`` (inside
                     a triple-quoted docstring), ``py_comment`` (after ``#``)
    C / CUDA source  ``c_comment`` (after ``//``), ``c_str`` (a string literal)
    LaTeX            ``latex_text`` (text mode)
    Graphviz DOT     ``dot_str`` (a quoted label)
    the terminal     ``terminal`` (stdout and stderr)
    ===============  =========================================================

The functions are total: any ``str`` goes in, and what comes out cannot end the
construct it sits in (close a docstring, end a comment, splice a line, start a
preprocessor directive, run a LaTeX command, move the cursor).  The spec reader
also refuses control and bidirectional-format characters up front
(``forbidden_char``), so these are the second line of defence, not the first.
"""

from __future__ import annotations

import re
import unicodedata

# Characters a spec may not contain anywhere: C0/C1 controls other than newline
# and tab, and the Unicode format characters (bidi overrides and isolates, zero
# width joiners, the BOM) that make source read differently from how it runs
# ("Trojan Source", CVE-2021-42574).  Line and paragraph separators too: Python's
# str.splitlines() and editors break lines there, compilers do not.
_ALLOWED_CONTROLS = {"\n", "\t"}


def forbidden_char(text: str):
    """The first character of ``text`` a spec may not contain, with its offset, or None."""
    for i, ch in enumerate(text):
        if ch in _ALLOWED_CONTROLS:
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return i, ch
    return None


def char_name(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: a character named safely for a message."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def _escape_unprintable(ch: str) -> str:
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _safe_char(ch: str) -> bool:
    """Printable, and not a format or separator character: shows as itself."""
    return ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp", "Co", "Cn", "Cs")


# -- Python ------------------------------------------------------------------

def py_str(text: str) -> str:
    """A Python string literal whose value is ``text`` (ASCII only)."""
    return ascii(str(text))


# a double quote before another or last in the text (\Z: the very end, not before a final newline)
_DOCSTRING_QUOTE = re.compile(r'"(?="|\Z)')


def py_docstring(text: str) -> str:
    """``text`` for the inside of a ``\"\"\"...\"\"\"`` docstring (not raw).

    Backslashes are escaped, and so is every double quote that stands before
    another or at the end (so no ``\"\"\"`` can form, not even with the closing
    quotes; a lone quote stays readable), and anything unprintable or non-ASCII is
    written as an escape sequence; newlines and tabs stay as they are.  The
    docstring's value at run time is exactly ``text``.
    """
    text = str(text)
    if text.isascii() and text.replace("\n", " ").replace("\t", " ").isprintable():
        # printable ASCII, newlines and tabs (every docstring the compiler writes):
        # only backslashes and the quotes before a quote or the end change
        return _DOCSTRING_QUOTE.sub(r'\\"', text.replace("\\", "\\\\"))
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and text[i + 1:i + 2] in ('"', ""):
            # a quote followed by a quote, or last (before the closing quotes): escaped,
            # so no three unescaped quotes can ever stand together
            out.append('\\"')
        elif ch in ("\n", "\t") or (" " <= ch <= "~"):
            out.append(ch)
        else:
            out.append(_escape_unprintable(ch))
    return "".join(out)


def py_comment(text: str) -> str:
    """``text`` for the rest of a line after ``#``: one line, ASCII, printable."""
    text = str(text)
    if text.isascii() and text.isprintable():   # the common case, unchanged (no newline, tab or control)
        return text
    out = []
    for ch in text:
        if ch in ("\n", "\r", "\t"):
            out.append(" ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(_escape_unprintable(ch))
    return "".join(out)


# -- C and CUDA ---------------------------------------------------------------

def c_comment(text: str) -> str:
    """``text`` for the rest of a line after ``//`` in C, C++ or CUDA.

    One line (newlines become spaces), printable ASCII; a backslash is written
    ``\\x5c`` so no line splice can form (line splicing runs before comments are
    removed, so a trailing backslash would comment out the next line), and ``?``
    before ``?`` is spaced so no trigraph (``??/`` is a backslash) can form.
    """
    out = []
    prev = ""
    for ch in str(text):
        if ch in ("\n", "\r", "\t"):
            ch = " "
        if ch == "\\":
            out.append("\\x5c")   # a backslash, never the last character of the line
            prev = ch
            continue
        if ch == "?" and prev == "?":
            out.append(" ")
        if " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"<U+{ord(ch):04X}>")
        prev = ch
    return "".join(out)


def c_str(text: str) -> str:
    """A C string literal whose value is ``text`` (UTF-8 bytes, octal escapes)."""
    out = ['"']
    prev = ""
    for b in str(text).encode("utf-8"):
        ch = chr(b)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "?" and prev == "?":
            out.append("\\?")   # no trigraphs
        elif 0x20 <= b <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")   # octal: at most three digits, never swallows the next one
        prev = ch
    out.append('"')
    return "".join(out)


# -- LaTeX ---------------------------------------------------------------------

_LATEX = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&",
    "#": r"\#", "^": r"\textasciicircum{}", "_": r"\_", "%": r"\%",
    "~": r"\textasciitilde{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", '"': r"\textquotedbl{}",
}


def latex_text(text: str) -> str:
    """``text`` as LaTeX text-mode material: every special character escaped, one line."""
    out = []
    for ch in str(text):
        if ch in _LATEX:
            out.append(_LATEX[ch])
        elif ch in ("\n", "\r", "\t"):
            out.append(" ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\textless{{}}U+{ord(ch):04X}\\textgreater{{}}")
    return "".join(out)


# -- the terminal ------------------------------------------------------------

def terminal(text: str, *, multiline: bool = False) -> str:
    """``text`` safe to print: no escape sequences, no bidi tricks.

    Control and format characters are shown as ``\\x1b``, ``\\u202e``; newlines
    are kept only when ``multiline`` (else they become spaces).
    """
    out = []
    for ch in str(text):
        if ch == "\n" and multiline:
            out.append(ch)
        elif ch in ("\n", "\r", "\t"):
            out.append(" " if ch != "\t" or not multiline else ch)
        elif _safe_char(ch):
            out.append(ch)
        else:
            out.append(_escape_unprintable(ch))
    return "".join(out)


# -- Graphviz DOT --------------------------------------------------------------

def dot_str(text: str) -> str:
    """A double-quoted DOT string whose label shows ``text`` (one line, ASCII)."""
    out = ['"']
    for ch in str(text):
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in ("\n", "\r", "\t"):
            out.append(" ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"&#{ord(ch)};")
    out.append('"')
    return "".join(out)
