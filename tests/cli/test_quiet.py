"""Third-party output goes to the log; our display stays on the terminal (a real process, real descriptors)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_output_to_routes_everything_but_our_console(tmp_path):
    log = tmp_path / "run.log"
    script = textwrap.dedent(f"""
        import logging, os, sys, warnings
        from rich.console import Console
        from layerbisect.quiet import output_to, terminal_file

        ours = Console(file=terminal_file(2), force_terminal=False, width=80)
        with output_to({str(log)!r}):
            os.write(1, b"Converting and de-quantizing GGUF tensors...: 100%|####| 236/236\\n")  # C-level write
            print("Loading weights 100%")                         # Python print
            sys.stderr.write("Writing model shards\\n")
            warnings.warn("a library warning")                     # Python warnings
            logging.getLogger("transformers").warning("INFO-ish log line")
            ours.print("our progress line")
            assert os.environ["TQDM_DISABLE"] == "1"
        print("after: back on stdout")
        assert "TQDM_DISABLE" not in os.environ
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "after: back on stdout\n", r.stdout
    assert r.stderr.strip() == "our progress line", r.stderr
    text = log.read_text()
    for line in ("Converting and de-quantizing", "Loading weights", "Writing model shards", "a library warning",
                 "INFO-ish log line"):  # fmt: skip
        assert line in text, line


def test_progress_display_keeps_tqdm_off_the_terminal(tmp_path):
    """rich's live display would route sys.stderr writes (tqdm) above itself; they must land in the log."""
    script = textwrap.dedent("""
        import sys, io
        from rich.console import Console
        from layerbisect.cli.progress import progress_display

        screen = io.StringIO()
        with progress_display(Console(file=screen, width=80)) as shown:
            shown.status("step one")
            shown.progress("layers.0.attn.q_proj", 1, 2)
            sys.stderr.write("Converting and de-quantizing GGUF tensors...:  50%|#####     | 1/2\\n")
            print("Loading weights")
        print("SCREEN:" + screen.getvalue().replace("\\n", " "))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "LAYERBISECT_CACHE": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    screen = r.stdout.split("SCREEN:", 1)[1]
    assert "Converting" not in screen and "Loading weights" not in screen, screen
    assert "Converting" not in r.stderr and "Loading weights" not in r.stdout.split("SCREEN:")[0]
    (log,) = (tmp_path / "logs").glob("bisect-*.log")
    assert "Converting and de-quantizing" in log.read_text() and "Loading weights" in log.read_text()
    assert str(log) in screen, "the display names the log file"
