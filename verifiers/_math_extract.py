"""Private helper of ``verifiers.math``: find the final answer in a model response.

Everything here is linear in the length of the response (one pass to match braces, regexes without
nested quantifiers), so it is safe to run in the trainer process on any input.
"""

from __future__ import annotations

import re

from verifiers._math_latex import _CONNECTOR_WORDS, _UNIT_WORDS

_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![a-zA-Z])")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_HASH_RE = re.compile(r"(?m)^[ \t]*#### *([^\n]*)")
_PHRASE_RE = re.compile(
    r"(?i)(?:\bfinal\s+answer\s*(?:is|:|=)?|\bthe\s+(?:final\s+)?answer\s+(?:is|should\s+be|would\s+be)|\banswer\s*(?::|=))[ \t:]*"
)
_STOP_WORDS = {"wait", "but", "however", "actually", "hmm", "check", "so", "therefore", "thus", "hence",
               "let", "correct", "answer", "final", "is", "not", "no", "recheck", "verify", "then", "think"}


def _brace_partners(text: str) -> dict[int, int]:
    """Map the index of every '{' to its matching '}' (unescaped braces only), in one pass."""
    partners: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    find = text.find
    while True:
        j1, j2, j3 = find("{", i), find("}", i), find("\\", i)
        cands = [j for j in (j1, j2, j3) if j >= 0]
        if not cands:
            break
        j = min(cands)
        c = text[j]
        if c == "\\":
            i = j + 2  # skip the escaped character (\{ \} \\)
            continue
        if c == "{":
            stack.append(j)
        elif stack:
            partners[stack.pop()] = j
        i = j + 1
    return partners


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{...}/\\fbox{...}/\\boxed 5 in order; unbalanced ones skipped."""
    out = []
    partners = None
    for m in _BOX_RE.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            if partners is None:
                partners = _brace_partners(text)
            k = partners.get(j)
            if k is None:
                out.append((m.start(), -1, None))  # unbalanced: a truncated response
                continue
            out.append((m.start(), k + 1, text[j + 1 : k]))
        elif j > m.end():
            mm = re.match(r"[^\s$]+", text[j : j + 200])
            if mm:
                content = mm.group(0).rstrip(".,;")
                out.append((m.start(), j + mm.end(), content))
    return out


_SEP_TOKEN_RE = re.compile(
    r"\s+|\$+|,|;|&|\\\\|\\[,;:! ]|\\q?quad|\\text\s*\{[^{}]{0,20}\}|\\mathrm\s*\{[^{}]{0,20}\}|[()]"
    r"|[A-Za-z](?:_\{?\w{1,4}\}?)?\s*=|\\[a-zA-Z]+|[A-Za-z]+|\."
)


def _joins(sep: str) -> bool:
    """Is the text between two boxes a joint ('1, 2', 'and', '\\quad'), not a revision?"""
    if len(sep) > 60 or "\n\n" in sep or "<" in sep or ">" in sep:
        return False
    words = 0
    pos = 0
    for m in _SEP_TOKEN_RE.finditer(sep):
        if m.start() != pos:
            return False
        pos = m.end()
        tok = m.group(0)
        if tok == ".":
            return False
        if tok.isalpha():
            low = tok.lower()
            if low in _STOP_WORDS:
                return False
            if low not in _CONNECTOR_WORDS and len(tok) > 1:
                words += 1
        if re.fullmatch(r"\\text\s*\{[^{}]*\}", tok):
            inner = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", tok).strip().lower()
            if inner and inner not in _CONNECTOR_WORDS and inner not in (",",):
                words += 1
    return pos == len(sep) and words <= 2


def _last_box_group(text: str, boxes) -> tuple[int, str] | None:
    if not boxes:
        return None
    group = [boxes[-1]]
    for b in reversed(boxes[:-1]):
        if _joins(text[b[1] : group[0][0]]):
            group.insert(0, b)
        else:
            break
    contents: list[str] = []
    for b in group:
        c = b[2].strip()
        if c and c not in contents:
            contents.append(c)
    if not contents:
        return group[-1][0], ""
    return group[0][0], ", ".join(contents)


_MATH_SEG_RE = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.S)
_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![A-Za-z0-9])|(?<![A-Za-z0-9.])-?\.\d+(?![A-Za-z0-9])")


def _prose_words(text: str) -> int:
    stripped = re.sub(r"\\(?:begin|end)\s*\{[^{}]*\}(?:\{[^{}]*\})?|\\text\s*\{[^{}]*\}|\\[a-zA-Z]+", " ", text)
    n = 0
    for w in re.findall(r"[A-Za-z]{2,}", stripped):
        low = w.lower()
        if low not in _CONNECTOR_WORDS and low not in _UNIT_WORDS:
            n += 1
    return n


def _bare(text: str) -> str | None:
    """A response with no answer marker: the answer itself, its last formula, or its last number."""
    t = text.strip()
    if not t:
        return None
    segs = list(_MATH_SEG_RE.finditer(t))
    if segs:
        outside = _MATH_SEG_RE.sub(" ", t)
        if _prose_words(outside) == 0:
            return t
        m = segs[-1]
        return next(g for g in m.groups() if g is not None).strip()
    if _prose_words(t) >= 3:
        nums = _NUMBER_RE.findall(t[-2000:])
        return nums[-1] if nums else None
    return t


def _phrase_answer(rest: str) -> str:
    """The text after 'The answer is': up to the end of the line/sentence, prose stripped."""
    line = rest.lstrip(" \t*_:").split("\n", 1)[0]  # markdown: **Answer:** 5
    line = re.split(r"(?<=[^\d\\])\.\s+(?=[A-Z])|\.\s*$", line.strip())[0] if line.strip() else line
    line = line.strip().strip("*_").strip()
    if _prose_words(_MATH_SEG_RE.sub(" ", line)) >= 1:
        # "The largest $n$ is 34": what follows the last ' is ' / '=' is the answer
        m = list(re.finditer(r"\b(?:is|are|equals|be)\b|=", line))
        if m:
            tail = line[m[-1].end():].strip()
            if tail:
                return _bare(tail) or tail
        return _bare(line) or line
    return line


def extract(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    tags = list(_ANSWER_TAG_RE.finditer(text))
    if tags:
        inner = tags[-1].group(1)
        got = _extract_plain(inner)
        return got
    if "<answer>" in text.lower():
        tail = text[text.lower().rfind("<answer>") + len("<answer>"):]
        return _extract_plain(tail)
    return _extract_plain(text)


def _extract_plain(text: str) -> str | None:
    cands: list[tuple[int, str]] = []
    boxes = _boxes(text)
    if boxes and boxes[-1][2] is None:
        return None  # the response stops inside its last box
    boxes = [b for b in boxes if b[2] is not None]
    grp = _last_box_group(text, boxes)
    if grp is not None:
        cands.append(grp)
    hashes = list(_HASH_RE.finditer(text))
    if hashes:
        h = hashes[-1]
        cands.append((h.start(), h.group(1).strip()))
    phrases = list(_PHRASE_RE.finditer(text[-5000:]))
    if phrases:
        p = phrases[-1]
        off = max(0, len(text) - 5000)
        start = off + p.start()
        # a box inside the phrase's sentence wins (it starts later)
        ans = _phrase_answer(text[off + p.end():])
        if ans and not re.fullmatch(r"[A-Za-z ,.!']{4,}", ans.strip()):  # "is correct" is not an answer
            cands.append((start, ans))
    if cands:
        best = max(cands, key=lambda c: c[0])
        ans = best[1].strip()
        return ans if ans else None
    return _bare(text)
