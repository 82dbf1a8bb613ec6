"""maskrcnn.progress.Progress: plain lines every 10 % off a terminal, a tqdm bar on one."""

from __future__ import annotations

import io

from maskrcnn.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal():
    stream = io.StringIO()  # not a terminal, like a log file, a pipe or captured stderr
    progress = Progress(20, "eval: images", stream=stream)
    callback = progress.per_batch(3)  # 7 batches of 3 images, the last one short
    for done in range(1, 8):
        callback(done, 7)
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    counts = [line.split()[2] for line in lines]
    assert counts == ["3/20", "6/20", "9/20", "12/20", "15/20", "18/20", "20/20"]
    assert all(line.startswith("eval: images: ") and line.endswith(" s)") for line in lines)


def test_at_most_one_line_per_tenth():
    stream = io.StringIO()
    progress = Progress(1000, "val: images", stream=stream)
    for done in range(1, 1001):
        progress.update(done)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first step (the loop has started), then each tenth
    assert lines[0].startswith("val: images: 1/1000 ") and lines[-1].startswith(
        "val: images: 1000/1000 ")


def test_a_terminal_gets_a_tqdm_bar():
    stream = _Terminal()
    progress = Progress(4, "eval: images", stream=stream)
    for done in range(1, 5):
        progress.update(done)
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "4/4" in text and "eval: images" in text
    assert text.endswith("\n")  # the finished bar is kept on its own line
    progress.close()  # a second close is harmless
