"""The training corpus of the reference model: the King James Bible (1611, public domain),
as shipped by Debian's `bible-kjv` package (text in bible-kjv-text, read with /usr/bin/bible).

Split by chapter: every 20th chapter (in canonical order) is held out and never trained on;
the shipped sample traces are captured from held-out chapters only.
"""
import re
import shutil
import subprocess

HOLDOUT_EVERY = 20
_REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def load_verses():
    """[(book, chapter, verse, text)] in canonical order."""
    exe = shutil.which("bible")
    if exe is None:
        raise RuntimeError("the corpus needs Debian's bible-kjv package (apt-get install bible-kjv)")
    out = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}).stdout.decode("ascii")
    verses = []
    for line in out.splitlines():
        m = _REF.match(line)
        if m:
            verses.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()))
    if len(verses) != 31102:
        raise RuntimeError(f"bible-kjv: expected 31102 verses, got {len(verses)}")
    return verses


def split_text():
    """(train_text, heldout_text): verses joined by newlines, chapters kept whole."""
    train, held = [], []
    chap_idx, last = -1, None
    for book, ch, _, text in load_verses():
        if (book, ch) != last:
            chap_idx += 1
            last = (book, ch)
        (held if chap_idx % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train).append(text)
    return "\n".join(train) + "\n", "\n".join(held) + "\n"
