"""Terminal injection: file names, metadata.csv names, log lines, config values and
safetensors metadata carrying control characters, escape sequences and bidi overrides
reach the terminal only as visible escapes (`\\x1b`, `\\r`, `\\u202e`), on a real
pseudo-terminal and through a pipe; the verdict line cannot be overprinted."""
from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image

from hostile.util import base_run, run_in_pty

pytestmark = pytest.mark.timeout(240)

# what an attacker writes: a fake verdict after a carriage return, clear screen, a window
# title, an OSC-8 hyperlink, a bidi override, a backspace and a C1 CSI
FAKE = "\r\x1b[2Kverdict: HEALTHY  (no findings)"
TITLE = "\x1b]0;pwned\x07"
LINK = "\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
BIDI = "\u202egpj.exe\u202c"
OTHER = "a\bb\x9b31mC1\u2066iso\u2069\u200bzw"
SGR = re.compile(rb"\x1b\[[0-9;]*m")         # our own colours (click.style)
PROGRESS = re.compile(rb"\rchecking images \d+/\d+")   # our own progress line on stderr


def hostile_run(root):
    run = base_run(root / f"run{CLEAR}")
    data = run / "img" / "10_x"
    data.mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(data / "a.png")
    # metadata.csv names files that do not exist: data.missing_file lists them
    (data / "metadata.csv").write_text(
        "file_name,text\na.png,ok\n"
        + "".join(f'"{n}.png",x\n' for n in (f"m{FAKE}", f"t{TITLE}", f"l{LINK}", f"b{BIDI}")),
        encoding="utf-8")
    (run / "config.toml").write_text(
        'train_data_dir = "img/10_x"\nnetwork_dim = 8\nlearning_rate = 1e-4\n'
        'pretrained_model_name_or_path = "/nonexistent/model\\u001b]0;pwned\\u0007\\r'
        '\\u001b[2Kverdict: HEALTHY"\n', encoding="utf-8")
    # a log whose *name* overprints the verdict, and whose OOM line carries sequences
    log = run / f"train{FAKE}{OTHER}.log"
    log.write_text(f"step 1\ntorch.OutOfMemoryError: CUDA out of memory. {TITLE}{LINK}{CLEAR}"
                   f"{BIDI}{FAKE}\n", encoding="utf-8")
    return run


def check_terminal_bytes(out: bytes, *, tty: bool) -> str:
    """No ESC from the data (only our SGR colours), no bare CR, no raw bidi/zero-width
    or C1 control; returns the text with our colours removed."""
    plain = PROGRESS.sub(b"", SGR.sub(b"", out))
    assert b"\x1b" not in plain, plain[max(0, plain.find(b"\x1b") - 80):plain.find(b"\x1b") + 80]
    if tty:
        plain = plain.replace(b"\r\n", b"\n")         # the pty's own newline translation
    assert b"\r" not in plain, plain[max(0, plain.find(b"\r") - 80):plain.find(b"\r") + 80]
    assert b"\x07" not in plain and b"\x08" not in plain
    text = plain.decode("utf-8")
    for ch in "\u202e\u202c\u2066\u2069\u200b\x9b":
        assert ch not in text, (hex(ord(ch)), text)
    return text


def test_analyze_on_a_terminal_shows_sequences_escaped(tmp_path):
    run = hostile_run(tmp_path)
    out = run_in_pty(["analyze", run, "--no-html"], cwd=tmp_path)
    text = check_terminal_bytes(out, tty=True)
    verdicts = [ln for ln in text.splitlines() if "verdict:" in ln]
    assert verdicts[0].startswith("verdict: FAILED"), verdicts
    # the fake verdicts are still there, visibly, as evidence: truthful, not dropped
    assert all(not v.lstrip().startswith("verdict: HEALTHY") for v in verdicts)
    assert "\\rverdict: HEALTHY" in text or "\\r\\x1b[2Kverdict: HEALTHY" in text
    assert "\\x1b]0;pwned\\x07" in text and "\\u202e" in text and "\\x08" in text
    # our own colours still reach the terminal
    assert SGR.search(out), out[:300]


def test_analyze_piped_text_is_escaped_too(tmp_path):
    from helpers import lorascope
    run = hostile_run(tmp_path)
    r = lorascope("analyze", run, "--no-html", subprocess_=True)
    assert r.returncode == 1, r.stderr
    check_terminal_bytes(r.stdout.encode(), tty=False)
    check_terminal_bytes(r.stderr.encode(), tty=False)
    assert "\x1b[" not in r.stdout          # not a terminal: no colours either


def test_json_escapes_control_and_bidi_characters(tmp_path):
    """JSON keeps the data exactly (it decodes to the same strings), but no raw ESC, C1,
    bidi or zero-width character is printed: `jq` or `cat` of the report cannot be
    turned against the terminal."""
    from helpers import lorascope
    run = hostile_run(tmp_path)
    r = lorascope("analyze", run, "--no-html", "--format", "json", subprocess_=True)
    assert r.returncode == 1, r.stderr
    check_terminal_bytes(r.stdout.encode(), tty=False)
    doc = json.loads(r.stdout)
    files = {f for fd in doc["findings"] for f in fd["files"]}
    assert any(BIDI in f for f in files), files      # the exact name survives decoding


def test_error_lines_are_one_visible_line(tmp_path):
    """An unreadable run named with a newline and escape sequences: still one line."""
    from helpers import lorascope
    d = tmp_path / f"empty\n{CLEAR}lorascope: all good"
    d.mkdir()
    r = lorascope("analyze", d, "--no-html", subprocess_=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    check_terminal_bytes(r.stderr.encode(), tty=False)


def test_inspect_metadata_values_are_escaped(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file
    f = tmp_path / f"lora{TITLE}.safetensors"
    save_file({"lora_unet_x.lora_down.weight": np.ones((4, 8), np.float32),
               "lora_unet_x.lora_up.weight": np.ones((8, 4), np.float32),
               f"lora_unet_{CLEAR}y.lora_down.weight": np.ones((4, 8), np.float32),
               f"lora_unet_{CLEAR}y.lora_up.weight": np.ones((8, 4), np.float32)},
              str(f), metadata={"ss_output_name": f"x{FAKE}{LINK}", "ss_network_dim": f"4{BIDI}",
                                "ss_sd_model_name": OTHER})
    out = run_in_pty(["inspect", f], cwd=tmp_path)
    text = check_terminal_bytes(out, tty=True)
    assert "ss_output_name = x\\r\\x1b[2Kverdict" in text, text
    from helpers import lorascope
    r = lorascope("inspect", f, "--format", "json", subprocess_=True)
    check_terminal_bytes(r.stdout.encode(), tty=False)
    assert json.loads(r.stdout)["files"][0]["metadata"]["ss_output_name"] == f"x{FAKE}{LINK}"
    assert os.path.exists(f)


def test_html_page_shows_sequences_escaped(tmp_path):
    """The report page too: no raw control, bidi or invisible character from the data
    (someone will `cat` it, a browser shows bidi overrides), the escapes visible."""
    import unicodedata
    from helpers import lorascope
    run = hostile_run(tmp_path)
    page_path = tmp_path / "report.html"
    r = lorascope("analyze", run, "--format", "json", "--html", page_path, subprocess_=True)
    assert r.returncode == 1, r.stderr
    page = page_path.read_text(encoding="utf-8")
    raw = [hex(ord(c)) for c in page if c not in "\n\u200c\u200d"
           and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    assert raw == [], raw[:20]
    assert "\\x1b]0;pwned\\x07" in page and "\\u202e" in page


def test_every_control_and_format_character_is_escaped():
    """The escaping table against Unicode's own categories (Cc, Cf, Zl, Zp; ZWJ and
    ZWNJ are kept for emoji and scripts), for the Python that runs the tests."""
    import unicodedata
    from lorascope.report.safe import json_safe, visible
    cats = ("Cc", "Cf", "Zl", "Zp")
    missed = [hex(c) for c in range(0x110000) if unicodedata.category(chr(c)) in cats
              and c not in (0x200C, 0x200D) and visible(chr(c)) == chr(c)]
    assert missed == []
    assert visible("a\u200db") == "a\u200db" and visible("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"
    assert all(ord(ch) < 128 for ch in visible("".join(map(chr, range(0x80, 0xA0)))))
    assert json.loads(json_safe(json.dumps("\u202e\x9b\U000e0041", ensure_ascii=False))) == "\u202e\x9b\U000e0041"
