"""Make untrusted text (PAM values, anything from a client) safe for a terminal or a log line.

Imported by the PAM hook, so it imports nothing.
"""

MAX_SHOWN = 200


def escape(value, limit=MAX_SHOWN):
    """Given any value, return printable text: control, non-ASCII-printable and undecodable characters escaped.

    No terminal escape sequence survives, and the result is at most about `limit` characters.
    """
    if value is None:
        return "-"
    text = str(value)
    cut = len(text) > limit
    out = []
    for ch in text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and ch != "\x7f":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if cut:
        out.append(f"...({len(text)} chars)")
    return "".join(out)
