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
    r"(?i)(?:\bfinal\s+answer\s*(?:is|:|=)?|\bthe\s+(?:final\s+)?answer\s+(?:is|should\s+be|would\s+be)"
    r"|\banswer\s*(?::|=))[ \t:]*"
)
_STOP_WORDS = set(
    "wait but however actually hmm check so therefore thus hence let correct answer final is not no recheck verify "
    "then think".split()
)


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


_MAX_BOX_CHARS = 5000  # a box is repaired only this far: past it the response is truncated, not mistyped
_SEP_TOKEN_RE = re.compile(
    r"\s+|\$+|,|;|&|\\\\|\\[,;:! ()\[\]]|\\q?quad|\\text\s*\{[^{}]{0,20}\}|\\mathrm\s*\{[^{}]{0,20}\}|[()]"
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
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_FRAC_ARG = rf"(?:\{{\s*-?{_NUM}\s*\}}|\d)"
# a whole number of prose: '2/3', '\frac{2}{3}', '-1,000.5', '{60}'. Touching a digit, '/', '^', '_', a
# brace, a backslash, an operator or a decimal point it is a fragment of something larger ('3' of
# '2/3', '2' of 'm^2', '5' of '5-6', '{4}' of '\frac{3}{4}', '-9' of '(-9)^2')
_NUMBER_RE = re.compile(
    rf"(?<![\w.^\\{{}}/+*\-\u2212])(?<!\d[,:])[-\u2212]?"
    rf"(?:\\[dt]?frac\s*{_FRAC_ARG}\s*{_FRAC_ARG}|{_NUM}(?:\s*/\s*{_NUM})?|\{{\s*-?{_NUM}\s*\}})"
    r"(?![\d\\^_{}/]|[.,:+*\-]\d|\)\s*\^)"
)


def _prose_words(text: str) -> int:
    stripped = re.sub(r"\\(?:begin|end)\s*\{[^{}]*\}(?:\{[^{}]*\})?|\\text\s*\{[^{}]*\}|\\[a-zA-Z]+", " ", text)
    n = 0
    for w in re.findall(r"[A-Za-z]{2,}", stripped):
        low = w.lower()
        if low not in _CONNECTOR_WORDS and low not in _UNIT_WORDS:
            n += 1
    return n


def _last_number(text: str) -> re.Match | None:
    """The last whole number of a prose text; one glued to a word counts only if the word is a unit
    ('1,000.99m^2'; metres only here: in an answer '2m' is a product)."""
    for m in reversed(list(_NUMBER_RE.finditer(text))):
        word = re.match(r"[A-Za-z]+", text[m.end() : m.end() + 30])
        if word is None or word.group(0).lower() in _UNIT_WORDS or word.group(0) == "m":
            return m
    return None


def _bare(text: str) -> str | None:
    """A response with no answer marker: the answer itself, else the later of its last formula and its
    last number. A number after the formula in the same sentence wins only over a formula without a
    digit: "There are $9$ divisors of 196" is 9, "The volume of $ABCD$ is 120" is 120."""
    t = text.strip()
    if not t:
        return None
    segs = list(_MATH_SEG_RE.finditer(t))
    outside = _MATH_SEG_RE.sub(lambda m: " " * len(m.group(0)), t)  # same length: offsets still hold
    if segs and _prose_words(outside) == 0:
        return t
    if not segs and _prose_words(t) < 3:
        return t
    tail = max(0, len(outside) - 2000)
    num = _last_number(outside[tail:])
    if segs:
        seg = segs[-1]
        formula = next(g for g in seg.groups() if g is not None).strip()
        if num is None or num.start() + tail < seg.start():
            return formula
        same_sentence = not re.search(r"[.!?;:](?:\s|$)|\n", t[seg.end() : num.start() + tail])
        if same_sentence and re.search(r"\d", formula):
            return formula
    if num is None:
        return None
    return num.group(0)[1:-1].strip() if num.group(0).startswith("{") else num.group(0)


_MINERVA_TAIL_RE = re.compile(r"\s*I hope it is correct\W*$", re.I)
# a choice letter followed by the end of the sentence or by its reason; "A bit more" is prose
_CHOICE_RE = re.compile(
    r"\**\(?([A-E])\)?\**(?=\s*$|[.!]|[,;:]?\s+(?:because|since|as|which|for|given|due|so|hence|thus)\b|[,;:]\s+[a-z])"
)


def _phrase_answer(rest: str) -> str:
    """The text after 'The answer is': up to the end of the line/sentence, prose stripped."""
    line = rest.lstrip(" \t*_:").split("\n", 1)[0]  # markdown: **Answer:** 5
    line = _MINERVA_TAIL_RE.sub("", line)
    # a sentence ends at '. ' and, in prose, at a '!' after a number ("The answer is 42!" is 42)
    if line.strip():
        line = re.split(r"(?<!\\)\.\s+(?=[A-Z])|\.\s*$|(?<=\d)!(?:\s+(?=[A-Z])|\s*$)", line.strip())[0]
    line = line.strip().strip("*_").strip()
    choice = _CHOICE_RE.match(line)
    if choice:
        return choice.group(1)
    if _prose_words(_MATH_SEG_RE.sub(" ", line)) >= 1:
        # "The largest $n$ is 34": what follows the last ' is ' / '=' is the answer
        m = list(re.finditer(r"\b(?:is|are|equals|be)\b|=", line))
        if m:
            tail = line[m[-1].end() :].strip()
            if tail:
                return _bare(tail) or tail
        return _bare(line) or line
    return line


_END_TOKEN_RE = re.compile(
    r"(?:<\|[A-Za-z_]{1,30}\|>(?:user|assistant|system)?|</s>|<eos>|<end_of_turn>|<｜end▁of▁sentence｜>)\s*$"
)


def _strip_end_tokens(text: str) -> str:
    """Drop the chat template's tokens that close a response (<|im_end|>, <|eot_id|>, </s>, or the
    header of a next turn the model went on to write, <|im_start|>user)."""
    for _ in range(8):
        t = text.rstrip()
        m = _END_TOKEN_RE.search(t[-40:])
        if m is None:
            return t
        text = t[: len(t) - len(m.group(0))]
    return text


def extract(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    text = _strip_end_tokens(text)
    tags = list(_ANSWER_TAG_RE.finditer(text))
    if tags:
        inner = tags[-1].group(1)
        got = _extract_plain(inner)
        return got
    if "<answer>" in text.lower():
        tail = text[text.lower().rfind("<answer>") + len("<answer>") :]
        return _extract_plain(tail)
    return _extract_plain(text)


def _closed_by_backslash(text: str, start: int) -> tuple[int, int, str] | None:
    """The box at ``start`` (unbalanced) closed by a ``\\}`` that opens no set: ``\\boxed{185\\}``."""
    j = text.index("{", start)
    depth, sets, i, end = 1, 0, j + 1, min(len(text), j + 1 + _MAX_BOX_CHARS)
    while i < end:
        c, two = text[i], text[i : i + 2]
        if two == "\\{":
            sets += 1
        elif two == "\\}" and sets:
            sets -= 1
        elif two == "\\}" or c == "}":
            depth -= 1
            if depth == 0:
                return start, i + len(two if c == "\\" else c), text[j + 1 : i]
        elif c == "{":
            depth += 1
        i += 2 if c == "\\" else 1
    return None


def _extract_plain(text: str) -> str | None:
    cands: list[tuple[int, str]] = []
    boxes = _boxes(text)
    if boxes and boxes[-1][2] is None:
        repaired = _closed_by_backslash(text, boxes[-1][0])
        if repaired is None:
            return None  # the response stops inside its last box
        boxes[-1] = repaired
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
        ans = _phrase_answer(text[off + p.end() :])
        if ans and not re.fullmatch(r"[A-Za-z ,.!']{4,}", ans.strip()):  # "is correct" is not an answer
            cands.append((start, ans))
    if cands:
        best = max(cands, key=lambda c: c[0])
        ans = best[1].strip()
        return ans if ans else None
    return _bare(text)
